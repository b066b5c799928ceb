//! `--procs N`: past one process's open-files limit. The loadgen runs itself N times, each
//! child with a disjoint slice of the population (its own id range, its share of devices,
//! rates and churn ids) and `--json` to a temporary file, shows the children's summed
//! progress each second and merges their reports into one.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::probe::KafkaProbe;
use crate::report::{dump, Report, Totals};
use crate::run::{describe, stop_on_signals, MemorySampler};
use crate::scenario::Scenario;

/// The `k`-th of `parts` near-equal shares of `total`.
pub fn share(total: u64, k: u64, parts: u64) -> u64 {
    total / parts + u64::from(k < total % parts)
}

/// The CPUs child `k` of `procs` runs its shards on: its own contiguous share of `cores`
/// when there are at least as many CPUs as children, else one CPU, round robin. Every child
/// on every CPU would run `procs` shards per CPU, each with its own buffers and histograms.
pub fn cores_of_child(cores: &[usize], k: u64, procs: u64) -> Vec<usize> {
    let len = cores.len() as u64;
    if len == 0 {
        return Vec::new();
    }
    if len < procs {
        return vec![cores[(k % len) as usize]];
    }
    let start = (0..k).map(|j| share(len, j, procs)).sum::<u64>() as usize;
    cores[start..start + share(len, k, procs) as usize].to_vec()
}

/// The flags that make child `k` of `procs` play its slice of `scenario`; they come after
/// the parent's own flags and override them.
pub fn child_args(
    scenario: &Scenario,
    total_rate: Option<f64>,
    k: u64,
    procs: u64,
    json: &std::path::Path,
) -> Vec<OsString> {
    let ids_of = |j: u64| share(scenario.publisher_ids(), j, procs);
    let id_start = scenario.id_start + (0..k).map(ids_of).sum::<u64>();
    let mut args: Vec<OsString> = vec![
        "--child".into(),
        "--procs".into(),
        "1".into(),
        "--id-start".into(),
        id_start.to_string().into(),
        "--count".into(),
        share(u64::from(scenario.devices), k, procs)
            .to_string()
            .into(),
        "--rate".into(),
        share(u64::from(scenario.connect_rate), k, procs)
            .max(1)
            .to_string()
            .into(),
        "--json".into(),
        json.as_os_str().to_owned(),
    ];
    let cores = cores_of_child(&scenario.cores, k, procs);
    args.extend([
        "--cores".into(),
        cores
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
            .into(),
    ]);
    if scenario.churn_total.is_some() {
        args.extend(["--churn-total".into(), ids_of(k).to_string().into()]);
    }
    if let Some(rate) = total_rate {
        args.extend([
            "--total-rate".into(),
            format!("{}", rate / procs as f64).into(),
        ]);
    }
    if let Some(path) = &scenario.per_device_csv {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{k}"));
        args.extend(["--per-device".into(), name]);
    }
    args
}

/// `probe`: prepared (Kafka warmed up) before; it sends from the children's start until the
/// last one has finished (verification included).
pub fn run(
    scenario: &Scenario,
    total_rate: Option<f64>,
    procs: u64,
    mut probe: Option<KafkaProbe>,
) -> Result<Report, String> {
    let exe = std::env::current_exe().map_err(|e| format!("--procs: own executable: {e}"))?;
    let own_args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let interrupted = stop_on_signals();
    let latest = Arc::new(Mutex::new(vec![Totals::default(); procs as usize]));
    let mut children: Vec<(Child, std::path::PathBuf)> = Vec::new();
    let mut readers = Vec::new();
    let mut memory = MemorySampler::new(&scenario.broker_pids, false);
    if let Some(probe) = &mut probe {
        probe.start();
    }
    for k in 0..procs {
        let json =
            std::env::temp_dir().join(format!("ferrymq-loadgen-{}-{k}.json", std::process::id()));
        let mut child = Command::new(&exe)
            .args(&own_args)
            .args(child_args(scenario, total_rate, k, procs, &json))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("--procs: start process {k}: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let latest = latest.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match line.strip_prefix("@progress ") {
                    Some(json) => {
                        if let Ok(totals) = serde_json::from_str::<Totals>(json) {
                            latest.lock().expect("progress lock")[k as usize] = totals;
                        }
                    }
                    None => println!("[proc {k}] {line}"),
                }
            }
        }));
        children.push((child, json));
    }

    let started = Instant::now();
    let mut previous = Totals::default();
    let mut connected_max = 0;
    let mut forwarded_stop = false;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let mut totals = Totals::default();
        for child_totals in latest.lock().expect("progress lock").iter() {
            totals += *child_totals;
        }
        connected_max = connected_max.max(totals.connected);
        memory.observe(totals.connected, false);
        println!(
            "{}",
            totals.progress_line(&previous, started.elapsed().as_secs(), 1.0)
        );
        previous = totals;
        if interrupted.load(std::sync::atomic::Ordering::Relaxed) && !forwarded_stop {
            for (child, _) in &children {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            }
            forwarded_stop = true;
        }
        let mut running = false;
        for (child, _) in &mut children {
            running |= child
                .try_wait()
                .map_err(|e| format!("--procs: {e}"))?
                .is_none();
        }
        if !running {
            break;
        }
    }
    for reader in readers {
        let _ = reader.join();
    }
    let probed = probe.map(KafkaProbe::finish);

    let mut merged: Option<Report> = None;
    for (k, (mut child, json)) in children.into_iter().enumerate() {
        let status = child.wait().map_err(|e| format!("--procs: {e}"))?;
        let text = std::fs::read_to_string(&json)
            .map_err(|_| format!("process {k} left no report ({status})"))?;
        let _ = std::fs::remove_file(&json);
        let report: Report = serde_json::from_str(&text)
            .map_err(|e| format!("process {k}: unreadable report: {e}"))?;
        match &mut merged {
            Some(merged) => merged.merge(&report),
            None => merged = Some(report),
        }
    }
    let mut report = merged.ok_or("--procs: no process ran")?;
    report.scenario = describe(scenario);
    report.devices.connected_max = connected_max;
    let broker = &memory.figures;
    report.memory.broker_rss_base_bytes = broker.broker_rss_base_bytes;
    report.memory.broker_rss_connected_bytes = broker.broker_rss_connected_bytes;
    report.memory.broker_bytes_per_connection = broker.broker_bytes_per_connection;
    if let Some((figures, latency)) = probed {
        report.kafka_probe = Some(figures);
        report.histograms.kafka_probe = dump(&latency);
        report.summarize_latencies();
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_total_without_overlap() {
        assert_eq!(
            (0..3).map(|k| share(10, k, 3)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert_eq!((0..4).map(|k| share(2, k, 4)).sum::<u64>(), 2);
    }

    #[test]
    fn children_get_disjoint_id_ranges() {
        let mut scenario = crate::device::tests::scenario();
        scenario.devices = 1000;
        scenario.churn_total = Some(1_000_001);
        scenario.id_start = 5;
        let path = std::path::Path::new("/tmp/x.json");
        let value_after = |args: &[OsString], flag: &str| -> u64 {
            let at = args.iter().position(|a| a == flag).unwrap();
            args[at + 1].to_str().unwrap().parse().unwrap()
        };
        let mut next = 5;
        let mut ids = 0;
        for k in 0..3 {
            let args = child_args(&scenario, Some(3000.0), k, 3, path);
            assert_eq!(value_after(&args, "--id-start"), next);
            let churn = value_after(&args, "--churn-total");
            next += churn;
            ids += churn;
            assert!(args.iter().any(|a| a == "1000"), "total rate share");
        }
        assert_eq!(ids, 1_000_001);
    }

    #[test]
    fn children_share_the_cpus() {
        let cores: Vec<usize> = (8..16).collect();
        let all: Vec<Vec<usize>> = (0..3).map(|k| cores_of_child(&cores, k, 3)).collect();
        assert_eq!(all, [vec![8, 9, 10], vec![11, 12, 13], vec![14, 15]]);
        let few = [0, 1];
        let all: Vec<Vec<usize>> = (0..3).map(|k| cores_of_child(&few, k, 3)).collect();
        assert_eq!(all, [vec![0], vec![1], vec![0]]);
        assert_eq!(cores_of_child(&few, 0, 1), vec![0, 1]);
    }
}
