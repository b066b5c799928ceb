//! `ferrymq decode`: the codec as a command-line diagnostic.

use std::process::Command;

fn ferrymq(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
        .args(args)
        .output()
        .expect("run ferrymq");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn decodes_a_connect_then_a_publish() {
    // CONNECT 3.1.1 "test", clean session, keep alive 60; then PUBLISH QoS 0 "a" = "hi".
    let (ok, stdout, _) = ferrymq(&[
        "decode",
        "10 10 00 04 4d 51 54 54 04 02 00 3c 00 04 74 65 73 74",
        "30 05 00 01 61 68 69",
    ]);
    assert!(ok);
    assert!(stdout.contains("client_id: \"test\""), "{stdout}");
    assert!(stdout.contains("topic: \"a\""), "{stdout}");
}

#[test]
fn names_the_reason_code_of_a_bad_packet() {
    // [MQTT-3.3.2-2]: a PUBLISH topic name must not contain wildcards.
    let (ok, _, stderr) = ferrymq(&["decode", "--protocol", "5", "30 06 00 01 2b 00 68 69"]);
    assert!(!ok);
    assert!(stderr.contains("0x82"), "{stderr}");
}

#[test]
fn rejects_bad_hex_with_exit_code_2() {
    let output = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
        .args(["decode", "zz"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
