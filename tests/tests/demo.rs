//! `cordon demo` as a user runs it: it must print an alert for the extraction campaign within
//! 60 seconds, none for the benign users or the office, and exit 0 on Ctrl-C (SIGINT).

use cordon_tests::cordon_bin;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the demo runs before Ctrl-C: long enough for benign traffic to have had its chance.
const OBSERVE: Duration = Duration::from_secs(45);

#[test]
fn demo_alerts_on_the_campaign_only_and_stops_on_ctrl_c() {
    let mut child = Command::new(cordon_bin())
        .arg("demo")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cordon demo");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stdout = child.stdout.take().expect("stdout");
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().expect("lock").push(line);
            }
        })
    };
    let stderr = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });

    let started = Instant::now();
    while started.elapsed() < OBSERVE {
        if let Some(status) = child.try_wait().expect("poll demo") {
            panic!(
                "the demo exited early with {status}: {:?}",
                lines.lock().expect("lock")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("send SIGINT");
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll demo") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not stop within 30 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().expect("stdout reader");
    let stderr = err_reader.join().expect("stderr reader");
    let lines = lines.lock().expect("lock").clone();
    let all = lines.join("\n");
    assert!(
        status.success(),
        "demo exit {status}\nstdout:\n{all}\nstderr:\n{}",
        stderr.join("\n")
    );

    let alerts: Vec<&String> = lines.iter().filter(|l| l.contains(" ALERT ")).collect();
    let campaign = ["account_id=acct-harvest-1", "198.51.100.0/24"];
    let first_campaign_alert = alerts
        .iter()
        .filter(|l| campaign.iter().any(|c| l.contains(c)))
        .filter_map(|l| {
            l.trim_start_matches('[')
                .split('s')
                .next()?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .fold(f64::INFINITY, f64::min);
    assert!(
        first_campaign_alert <= 60.0,
        "no campaign alert within 60 s:\n{all}"
    );
    for line in &alerts {
        assert!(
            campaign.iter().any(|c| line.contains(c)),
            "alert for a benign entity: {line}\n{all}"
        );
    }
    assert!(all.contains("demo stopped:"), "no closing summary:\n{all}");
    assert!(
        !all.contains("Solve problem"),
        "raw prompt text printed:\n{all}"
    );
}
