//! nasop-trainer as several ranks of one data-parallel run (processes on loopback, gloo
//! through libtorch's process group): one model, rank 0 alone reports, a stop reaches every
//! rank, a rank that dies fails the run with the reason.

mod common;

use common::*;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A port for rank 0's store. Not one from bind(0): that port is free only until the next
/// bind(0) (a report server of a test running beside) may be given it, and rank 0 then fails
/// with EADDRINUSE while the other ranks wait for it. Ports below the kernel's ephemeral range
/// (where bind(0) picks), from a counter of this process, free when handed out.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20000;
    const SPAN: u32 = 12000;
    let start = std::process::id().wrapping_mul(37) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free port between {LOW} and {}", LOW + SPAN);
        let port = (LOW + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
        {
            return port;
        }
    }
}

/// A quick run (common::quick's) on one thread: the ranks share the machine's cores.
fn one_thread(c: &mut Command) -> &mut Command {
    c.args([
        "train",
        "--arch",
        SMALL_CELL,
        "--channels",
        "4",
        "--cells-per-stage",
        "1",
        "--threads",
        "1",
        "--seed",
        "3",
    ])
}

/// The quick runs' data: 4000 images in batches of 100, unless `extra` says otherwise.
fn sized<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = extra.to_vec();
    if !extra.contains(&"--batch-size") {
        args.extend(["--limit", "4000", "--batch-size", "100"]);
    }
    args
}

/// Rank `rank` of `world`, on a quick Fashion-MNIST run, reporting to `url`.
fn rank(rank: usize, world: usize, port: u16, url: &str, extra: &[&str]) -> Command {
    let mut c = trainer();
    one_thread(&mut c)
        .args(sized(extra))
        .env("WORLD_SIZE", world.to_string())
        .env("RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("NASOP_REPORT_URL", url)
        .env("NASOP_REPORT_TOKEN", "t")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn spawn_ranks(world: usize, url: &str, extra: &[&str]) -> Vec<Child> {
    let port = free_port();
    (0..world)
        .map(|r| rank(r, world, port, url, extra).spawn().unwrap())
        .collect()
}

/// Every rank's output, as a JobSet with no restarts would end them: once one rank has
/// failed, the others (which would wait for it until the process group's timeout) are
/// killed 30 s later; all are killed after 10 minutes.
fn wait_ranks(mut children: Vec<Child>) -> Vec<Output> {
    use std::io::Read;
    let readers: Vec<_> = children
        .iter_mut()
        .map(|c| {
            let mut out = c.stdout.take().unwrap();
            let mut err = c.stderr.take().unwrap();
            (
                std::thread::spawn(move || {
                    let mut b = Vec::new();
                    let _ = out.read_to_end(&mut b);
                    b
                }),
                std::thread::spawn(move || {
                    let mut b = Vec::new();
                    let _ = err.read_to_end(&mut b);
                    b
                }),
            )
        })
        .collect();
    let limit = Instant::now() + Duration::from_secs(600);
    let mut statuses = vec![None; children.len()];
    let mut failed_at: Option<Instant> = None;
    while statuses.iter().any(Option::is_none) {
        for (c, status) in children.iter_mut().zip(statuses.iter_mut()) {
            if status.is_none()
                && let Some(s) = c.try_wait().unwrap()
            {
                if !s.success() {
                    failed_at.get_or_insert_with(Instant::now);
                }
                *status = Some(s);
            }
        }
        let give_up = Instant::now() > limit
            || failed_at.is_some_and(|f| f.elapsed() > Duration::from_secs(30));
        if give_up {
            for (c, status) in children.iter_mut().zip(statuses.iter_mut()) {
                if status.is_none() {
                    let _ = c.kill();
                    *status = Some(c.wait().unwrap());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    readers
        .into_iter()
        .zip(statuses)
        .map(|((out, err), status)| Output {
            status: status.unwrap(),
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        })
        .collect()
}

/// The weights digest a rank logs at its end (each rank must hold the same model).
fn digest(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find_map(|l| l.split_once("weights digest ").map(|(_, d)| d.to_string()))
        .unwrap_or_else(|| panic!("no weights digest in:\n{err}"))
}

#[test]
fn two_ranks_train_one_model_and_rank_zero_alone_reports() {
    let server = ReportServer::start(usize::MAX);
    let outs: Vec<Output> = wait_ranks(spawn_ranks(2, &server.url, &["--epochs", "3"]));
    let printed = lines(&outs[0]);
    assert!(
        outs[1].status.success(),
        "rank 1: {}",
        String::from_utf8_lossy(&outs[1].stderr)
    );
    assert!(outs[1].stdout.is_empty(), "rank 1 prints no report");
    assert_eq!(printed.len(), 4, "three epochs and the final line");
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.len(), 4, "only rank 0 posts: {seen:?}");
    assert_eq!(
        digest(&outs[0]),
        digest(&outs[1]),
        "the ranks' models differ"
    );

    // One process with the same recipe (global batch 100, the same learning rate) trains
    // to about the same accuracy: the ranks' shares of each batch add up to the batch.
    let one = lines(
        &one_thread(&mut trainer())
            .args(sized(&["--epochs", "3"]))
            .output()
            .unwrap(),
    );
    let (two, one) = (
        metric(printed.last().unwrap(), "val_accuracy"),
        metric(one.last().unwrap(), "val_accuracy"),
    );
    assert!(two > 0.6, "two ranks reached {two}");
    assert!(
        (two - one).abs() < 0.1,
        "two ranks {two} vs one process {one}"
    );
}

#[test]
fn a_stop_reply_to_rank_zero_ends_every_rank() {
    let server = ReportServer::start(1);
    let started = Instant::now();
    let outs: Vec<Output> = wait_ranks(spawn_ranks(2, &server.url, &["--epochs", "20"]));
    let last = lines(&outs[0]).last().unwrap().clone();
    assert_eq!(last["info"]["ending"], "StoppedByRunner");
    assert_eq!(metric(&last, "epoch"), 1.0);
    assert!(outs[1].status.success());
    let err = String::from_utf8_lossy(&outs[1].stderr);
    assert!(err.contains("rank 1: StoppedByRunner"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(120));
}

#[test]
fn a_rank_that_dies_fails_the_run_with_the_reason() {
    let server = ReportServer::start(usize::MAX);
    let dir = tempdir("rank-dies");
    let termination = dir.join("termination-log");
    let port = free_port();
    let mut zero = rank(0, 2, port, &server.url, &["--epochs", "20"])
        .env("NASOP_TERMINATION_PATH", &termination)
        .spawn()
        .unwrap();
    let mut one = rank(1, 2, port, &server.url, &["--epochs", "20"])
        .spawn()
        .unwrap();
    // Rank 1 is killed once training is under way (rank 0 reported an epoch).
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no epoch was reported");
        std::thread::sleep(Duration::from_millis(100));
    }
    one.kill().unwrap();
    one.wait().unwrap();
    let killed = Instant::now();
    let status = zero.wait().unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(
        killed.elapsed() < Duration::from_secs(60),
        "rank 0 noticed after {:?}",
        killed.elapsed()
    );
    let message = std::fs::read_to_string(&termination).unwrap();
    assert!(
        message.contains("across 2 ranks failed"),
        "the termination message says why: {message}"
    );

    // A rank whose peers never come fails at the rendezvous, after the timeout it names.
    let out = rank(0, 2, free_port(), &server.url, &["--epochs", "1"])
        .env("NASOP_DIST_TIMEOUT_SECONDS", "3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("joining the process group of 2 ranks") && err.contains("waited up to 3 s"),
        "{err}"
    );
}

#[test]
fn a_one_shot_search_refuses_several_ranks() {
    let out = trainer()
        .args(["train", "--mode", "darts", "--limit", "100"])
        .env("WORLD_SIZE", "2")
        .env("RANK", "0")
        .env("MASTER_ADDR", "127.0.0.1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a one-shot search"), "{err}");
}

/// SIGTERM to every rank (a deleted JobSet) ends the run as interrupted, with rank 0's
/// checkpoint of the last epoch; the next attempt resumes there on every rank.
#[test]
fn terminated_ranks_resume_together_from_rank_zeros_checkpoint() {
    let server = ReportServer::start(usize::MAX);
    let dir = tempdir("dp-resume");
    let checkpoint = dir.to_str().unwrap();
    let port = free_port();
    let extra = ["--epochs", "30"];
    let zero = rank(0, 2, port, &server.url, &extra)
        .args(["--checkpoint-dir", checkpoint])
        .spawn()
        .unwrap();
    let one = rank(1, 2, port, &server.url, &extra).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no epoch was reported");
        std::thread::sleep(Duration::from_millis(100));
    }
    for child in [&zero, &one] {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    for (r, child) in [zero, one].into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(143),
            "rank {r}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reported = server.seen.lock().unwrap().len();

    let server = ReportServer::start(1);
    let port = free_port();
    let zero = rank(0, 2, port, &server.url, &extra)
        .args(["--checkpoint-dir", checkpoint])
        .spawn()
        .unwrap();
    let one = rank(1, 2, port, &server.url, &extra).spawn().unwrap();
    let outs: Vec<Output> = wait_ranks(vec![zero, one]);
    let printed = lines(&outs[0]);
    assert!(
        printed[0]["step"].as_u64().unwrap() >= reported as u64,
        "resumed after the checkpointed epoch {reported}: {}",
        printed[0]
    );
    assert_eq!(
        digest(&outs[0]),
        digest(&outs[1]),
        "rank 1 took rank 0's state"
    );
}

/// A batch smaller than the number of ranks leaves some ranks an empty share: they still
/// take part in every exchange, and the ranks end with one model.
#[test]
fn a_batch_smaller_than_the_ranks_still_trains_one_model() {
    let server = ReportServer::start(usize::MAX);
    let extra = [
        "--epochs",
        "1",
        "--batch-size",
        "3",
        "--max-batches",
        "20",
        "--limit",
        "500",
    ];
    let outs: Vec<Output> = wait_ranks(spawn_ranks(4, &server.url, &extra));
    let last = lines(&outs[0]).last().unwrap().clone();
    assert!(metric(&last, "train_loss").is_finite());
    for out in &outs[1..] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(digest(out), digest(&outs[0]));
    }
}
