//! Reading a new password for `ferrymq passwd`: twice from the terminal without echo, or
//! one line from standard input when that is not a terminal.

use std::io::{self, BufRead, Write};
use std::sync::OnceLock;

/// Longest password accepted (what `mosquitto_passwd` accepts, and MQTT can carry).
pub const PASSWORD_BYTES_MAX: usize = 65535;

/// The terminal settings to put back if a signal ends the process while echo is off.
static SAVED_TERMIOS: OnceLock<libc::termios> = OnceLock::new();

const RESTORE_SIGNALS: [libc::c_int; 4] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

extern "C" fn restore_terminal_and_reraise(signal: libc::c_int) {
    // Only async-signal-safe calls here: tcsetattr, signal, raise.
    if let Some(saved) = SAVED_TERMIOS.get() {
        // SAFETY: `saved` is a valid termios read by tcgetattr; fd 0 is stdin.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, saved) };
    }
    // SAFETY: restoring the default action and re-raising ends the process as the signal
    // would have.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// Echo turned off on stdin (a terminal) until dropped.
struct EchoOff {
    saved: libc::termios,
}

impl EchoOff {
    fn new() -> io::Result<EchoOff> {
        // SAFETY: termios is plain data; tcgetattr fills it in.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 and a valid pointer.
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let _ = SAVED_TERMIOS.set(saved);
        for signal in RESTORE_SIGNALS {
            let handler = restore_terminal_and_reraise as extern "C" fn(libc::c_int);
            // SAFETY: the handler only makes async-signal-safe calls.
            unsafe { libc::signal(signal, handler as libc::sighandler_t) };
        }
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // Still echo the newline, so that what follows starts on a new line.
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: fd 0 and a valid termios.
        if unsafe { libc::tcsetattr(0, libc::TCSAFLUSH, &quiet) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EchoOff { saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: fd 0 and the termios read in `new`.
        unsafe { libc::tcsetattr(0, libc::TCSAFLUSH, &self.saved) };
        for signal in RESTORE_SIGNALS {
            // SAFETY: back to the default action.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
}

fn stdin_is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(0) == 1 }
}

/// One line from stdin without its line end; an error at end of input.
fn read_line(stdin: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    if stdin.read_until(b'\n', &mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "no password given (end of input)",
        ));
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(line)
}

fn check(password: Vec<u8>) -> io::Result<Vec<u8>> {
    if password.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty password",
        ));
    }
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the password is longer than {PASSWORD_BYTES_MAX} bytes"),
        ));
    }
    Ok(password)
}

/// A new password: asked twice on the terminal without echo (prompts on stderr), or one
/// line read from stdin when it is not a terminal. Refuses an empty password, one longer
/// than [`PASSWORD_BYTES_MAX`], and two entries that differ.
pub fn read_new_password() -> io::Result<Vec<u8>> {
    let stdin = io::stdin();
    let mut stdin = stdin.lock();
    if !stdin_is_terminal() {
        return check(read_line(&mut stdin)?);
    }
    let mut ask = |prompt: &str| -> io::Result<Vec<u8>> {
        let mut stderr = io::stderr();
        stderr.write_all(prompt.as_bytes())?;
        stderr.flush()?;
        let _echo_off = EchoOff::new()?;
        read_line(&mut stdin)
    };
    let first = ask("Password: ")?;
    let second = ask("Reenter password: ")?;
    if first != second {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the passwords do not match",
        ));
    }
    check(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_line() {
        assert_eq!(read_line(&mut &b"pw\r\nrest"[..]).unwrap(), b"pw");
        assert_eq!(read_line(&mut &b"no newline"[..]).unwrap(), b"no newline");
        assert!(read_line(&mut &b""[..]).is_err());
        assert!(check(Vec::new()).is_err());
        assert!(check(vec![b'x'; PASSWORD_BYTES_MAX + 1]).is_err());
    }
}
