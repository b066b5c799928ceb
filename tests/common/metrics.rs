//! Reading the broker's Prometheus endpoint (`--metrics ADDR`) from a test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// GET `path` on the metrics endpoint on 127.0.0.1:`port`: the body.
pub fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_string())
}

/// The value of `ferrymq_NAME` (or `ferrymq_NAME_total`) in a Prometheus text body.
pub fn metric(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let key = key.strip_prefix("ferrymq_")?;
            (key == name || key.strip_suffix("_total") == Some(name))
                .then(|| value.trim().parse::<f64>().ok().map(|v| v as u64))
                .flatten()
        })
}
