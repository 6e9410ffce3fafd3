//! Concurrency, owner death, crash safety and bounded memory: the cache must
//! be impossible to break.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

#[test]
fn identical_concurrent_runs_execute_once() {
    let env = Env::new();
    let script = format!("{}; sleep 1.5; echo out; echo err >&2; exit 0", env.tally("runs"));
    let children: Vec<_> = (0..12).map(|_| env.start(["--", "sh", "-c", &script])).collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    assert_eq!(env.count("runs"), 1, "the command ran more than once");
    for out in &outputs {
        assert_code(out, 0);
        assert_eq!(stdout(out), "out\n");
        assert!(stderr(out).contains("err\n"), "{}", stderr(out));
    }
}

#[test]
fn a_waiter_shares_a_failure_and_a_later_run_runs_again() {
    let env = Env::new();
    // The first run fails (not cached); the run waiting on it shares that
    // outcome, as a singleflight does; a run after it executes again.
    let script = format!(
        "{}; sleep 1; [ -e ok ] || {{ touch ok; exit 3; }}; echo fine",
        env.tally("runs")
    );
    let first = env.start(["--", "sh", "-c", &script]);
    std::thread::sleep(Duration::from_millis(300));
    let second = env.run(["--", "sh", "-c", &script]);
    let first = first.wait_with_output().unwrap();
    assert_code(&first, 3);
    assert_code(&second, 3);
    assert_eq!(env.count("runs"), 1);
    let third = env.run(["--", "sh", "-c", &script]);
    assert_code(&third, 0);
    assert_eq!(stdout(&third), "fine\n");
    assert_eq!(env.count("runs"), 2);
}

#[test]
fn no_wait_runs_at_once() {
    let env = Env::new();
    let script = format!("{}; sleep 2", env.tally("runs"));
    let mut first = env.lcrun().args(["--", "sh", "-c", &script]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let quick = env.run([
        "--no-wait",
        "--",
        "sh",
        "-c",
        &format!("{}; echo now", env.tally("runs")),
    ]);
    assert_code(&quick, 0);
    assert!(start.elapsed() < Duration::from_millis(1500));
    first.wait().unwrap();
}

#[test]
fn parallel_distinct_runs_never_fail() {
    let env = Env::new();
    let children: Vec<_> = (0..32)
        .map(|i| {
            let script = format!("{}; echo job {i}; head -c 200000 /dev/zero", env.tally("runs"));
            env.start(["--", "sh", "-c", &script])
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_code(&out, 0);
        assert!(out.stdout.starts_with(format!("job {i}\n").as_bytes()));
        assert_eq!(out.stdout.len(), format!("job {i}\n").len() + 200_000);
        assert_eq!(stderr(&out), "", "job {i} printed on stderr");
    }
    assert_eq!(env.count("runs"), 32);
    // Every entry was stored: all 32 are hits now.
    for i in 0..32 {
        let out = env.run([
            "--",
            "sh",
            "-c",
            &format!("{}; echo job {i}; head -c 200000 /dev/zero", env.tally("runs")),
        ]);
        assert_code(&out, 0);
    }
    assert_eq!(env.count("runs"), 32, "an entry was lost");
}

#[test]
fn killed_owner_does_not_block_the_next_run() {
    let env = Env::new();
    let script = format!("{}; echo $$ > pid; sleep 30; echo late", env.tally("runs"));
    let mut owner = env.lcrun().args(["--", "sh", "-c", &script]).spawn().unwrap();
    let start = Instant::now();
    while !env.path("pid").exists() {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(owner.id() as i32, libc::SIGKILL) };
    owner.wait().unwrap();
    // The command died with its owner; its key's lock went with the owner.
    let fresh = format!("{}; echo fresh", env.tally("runs"));
    let start = Instant::now();
    let out = env.run(["--", "sh", "-c", &fresh]);
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "fresh\n");
    assert!(start.elapsed() < Duration::from_secs(10));
    // The same key as the killed owner: it must run, not wait 30 s, not replay.
    let start = Instant::now();
    let mut same = env
        .lcrun()
        .args(["--timeout", "60s", "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        env.count("runs"),
        3,
        "a run of the dead owner's key did not start"
    );
    unsafe { libc::kill(same.id() as i32, libc::SIGTERM) };
    same.wait().unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    for pid in pids(&env.path("pid")) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

#[test]
fn sigkill_during_a_large_write_never_corrupts_or_replays_partial_output() {
    let env = Env::new();
    env.write("gen.sh", "seq 1 7000000\n"); // about 50 MB
    let run = || {
        env.lcrun()
            .args(["--", "sh", "gen.sh"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    for i in 0..10 {
        let mut child = run();
        std::thread::sleep(Duration::from_millis(50 + 97 * (i % 7)));
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let _ = Command::new("pkill").args(["-f", "seq 1 7000000"]).status();
    }
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    let expected = Command::new("sh")
        .arg(env.path("gen.sh"))
        .output()
        .unwrap()
        .stdout;
    for _ in 0..2 {
        let out = env.run(["--", "sh", "gen.sh"]);
        assert_code(&out, 0);
        assert!(
            out.stdout == expected,
            "output differs from a direct run ({} vs {} bytes)",
            out.stdout.len(),
            expected.len()
        );
    }
    // The killed runs' blobs went with their pending records, but for those
    // the stored entry uses too (the same bytes): every blob is in use, and
    // every pack a row names is there.
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    let unused: i64 = conn
        .query_row(
            "SELECT count(*) FROM blobs WHERE digest NOT IN (SELECT digest FROM uses)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unused, 0, "blobs no record uses");
    let packs: Vec<String> = conn
        .prepare("SELECT DISTINCT pack FROM blobs WHERE pack IS NOT NULL")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for pack in packs {
        assert!(env.cache.join("blobs").join(&pack).exists(), "{pack} is missing");
    }
}

#[test]
fn garbage_over_the_database_is_moved_aside() {
    let env = Env::new();
    let script = format!("{}; echo real; exit 3", env.tally("runs"));
    assert_code(&env.run(["--cache-failures", "--", "sh", "-c", &script]), 3);
    std::fs::write(env.db(), vec![0x5a; 64 * 1024]).unwrap();
    let out = env.run(["--cache-failures", "--", "sh", "-c", &script]);
    assert_code(&out, 3);
    assert_eq!(stdout(&out), "real\n");
    assert_eq!(
        stderr(&out).lines().filter(|l| l.starts_with("lcrun:")).count(),
        1,
        "{}",
        stderr(&out)
    );
    let moved = std::fs::read_dir(&env.cache)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name().to_string_lossy().into_owned();
            // The damaged file itself; its -wal and -shm go with it.
            name.starts_with("cache.db.corrupt-") && !name.ends_with("-wal") && !name.ends_with("-shm")
        })
        .count();
    assert_eq!(moved, 1, "the damaged file was not kept aside");
    // The fresh database works as a cache.
    assert_code(&env.run(["--cache-failures", "--", "sh", "-c", &script]), 3);
    assert_eq!(env.count("runs"), 2);
}

#[test]
fn truncated_database_still_runs_the_command() {
    let env = Env::new();
    for i in 0..20 {
        env.run(["--", "sh", "-c", &format!("seq {i} 20000")]);
    }
    let len = std::fs::metadata(env.db()).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(env.db()).unwrap();
    file.set_len(len / 3).unwrap();
    drop(file);
    let _ = std::fs::remove_file(env.cache.join("cache.db-wal"));
    for i in 0..20 {
        let out = env.run(["--", "sh", "-c", &format!("seq {i} 20000")]);
        assert_code(&out, 0);
        let expected: String = (i..=20000).map(|n| format!("{n}\n")).collect();
        assert!(
            stdout(&out) == expected,
            "run {i}: wrong output; stderr: {}",
            stderr(&out)
        );
    }
}

/// Peak resident memory (KiB) of lcrun while it runs, and a fingerprint of
/// its stdout (the first bytes and the length).
///
/// Sampled from `VmHWM` in /proc while it runs, not from `wait4`'s
/// `ru_maxrss`: Linux folds the memory a process had before `exec` into
/// that, and a child spawned from this many-threaded test harness starts
/// life sharing the harness's memory, which made a 13 MiB lcrun look like
/// 100 MiB.
fn peak_rss_kib(env: &Env, args: &[&str]) -> (u64, Vec<u8>) {
    let mut child = env.lcrun().args(args).stdout(Stdio::piped()).spawn().unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while let Ok(status) = std::fs::read_to_string(&status_path) {
            let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:"));
            match hwm.and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok()) {
                Some(kib) => peak = peak.max(kib),
                None => break, // a zombie: the process has ended
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        peak
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut counted = 0usize;
    let mut head = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        use std::io::Read;
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        if head.len() < 64 {
            head.extend_from_slice(&buf[..n.min(64)]);
        }
        counted += n;
    }
    let peak = sampler.join().unwrap();
    assert!(child.wait().unwrap().success(), "lcrun failed");
    head.truncate(64);
    head.extend_from_slice(&counted.to_be_bytes());
    (peak, head)
}

#[test]
fn huge_output_streams_in_bounded_memory() {
    let env = Env::new();
    // 256 MiB of incompressible-ish text through a debug build; the release
    // benchmark pushes 1 GiB.
    let args = ["--", "sh", "-c", "seq 1 40000000 | head -c 268435456"];
    let (miss, first) = peak_rss_kib(&env, &args);
    let (hit, second) = peak_rss_kib(&env, &args);
    assert_eq!(first, second, "replay differs");
    assert!(first.ends_with(&268435456usize.to_be_bytes()));
    let files = std::fs::read_dir(&env.cache).unwrap().map(|e| {
        let e = e.unwrap();
        format!(
            "{} {}",
            e.file_name().to_string_lossy(),
            e.metadata().unwrap().len()
        )
    });
    let files: Vec<_> = files.collect();
    eprintln!("peak RSS: miss {miss} KiB, hit {hit} KiB");
    assert!(miss < 32 * 1024, "miss peak RSS {miss} KiB; {files:?}");
    assert!(hit < 32 * 1024, "hit peak RSS {hit} KiB; {files:?}");
}

#[test]
fn build_logs_are_stored_compressed() {
    let env = Env::new();
    let log = "for i in $(seq 1 20000); do echo \"[$i/20000] CC src/module_$((i % 97))/file_$i.o -O2 -Wall -Iinclude\"; \
               [ $((i % 50)) = 0 ] && echo \"warning: unused variable 'x' in src/module_$((i % 97))/file_$i.c:$((i % 300))\" >&2; done; true";
    let out = env.run(["--", "sh", "-c", log]);
    assert_code(&out, 0);
    let raw = out.stdout.len() + out.stderr.len();
    assert!(raw > 1_000_000);
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    let (stored, meta): (i64, String) = conn
        .query_row("SELECT bytes, meta FROM entries WHERE key IS NOT NULL", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    let counted = meta["stdout"]["size"].as_i64().unwrap() + meta["stderr"]["size"].as_i64().unwrap();
    assert_eq!(counted as usize, raw);
    let ratio = stored as f64 / raw as f64;
    assert!(ratio <= 0.2, "stored {stored} of {raw} bytes: ratio {ratio:.3}");
    // And it replays identically.
    let again = env.run(["--", "sh", "-c", log]);
    assert!(again.stdout == out.stdout && again.stderr == out.stderr);
}

/// Runs `script` in a private mount namespace where `cache` is a fresh tmpfs
/// of `size`, so a full disk or a read-only cache is real, not simulated.
/// How many stored blobs use each codec tag (1 zstd, 2 LZ4).
fn codecs(env: &Env) -> std::collections::BTreeMap<i64, i64> {
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    let mut stmt = conn
        .prepare("SELECT codec, count(*) FROM blobs GROUP BY codec")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn output_at_a_builds_pace_gets_zstd_and_a_firehose_lz4() {
    let env = Env::new();
    // 2 MB in 8 bursts a tenth of a second apart: 20 MB/s at most.
    let line = "[12/400] /usr/bin/c++ -O2 -g -Wall -c ../src/core/parser.cc -o obj/parser.o\n";
    env.write("burst", line.repeat(3500));
    let slow = env.run([
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8; do cat burst; sleep 0.1; done",
    ]);
    assert_code(&slow, 0);
    assert_eq!(
        codecs(&env).into_keys().collect::<Vec<_>>(),
        [1],
        "{:?}",
        codecs(&env)
    );

    // 32 MB in one go; numbered lines, so no two blobs are the same bytes
    // (a blob is stored once, with the codec of its first arrival).
    let env = Env::new();
    env.write(
        "log",
        (0..400_000)
            .map(|i| format!("[{i}/400000] {}", &line[9..]))
            .collect::<String>(),
    );
    let fast = env.run(["--", "cat", "log"]);
    assert_code(&fast, 0);
    let counts = codecs(&env);
    let lz4 = counts.get(&2).copied().unwrap_or(0);
    let all: i64 = counts.values().sum();
    assert!(lz4 * 2 > all, "{counts:?}");
    assert!(env.run(["--", "cat", "log"]).stdout == fast.stdout);
}

fn with_tmpfs_cache(env: &Env, size: &str, script: &str) -> std::process::Output {
    std::fs::create_dir_all(&env.cache).unwrap();
    let probe = Command::new("unshare").args(["-m", "true"]).status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "this test needs root and unshare(1) to mount a tmpfs in a private namespace"
    );
    let cache = env.cache.display().to_string();
    env.lcrun()
        .env("CACHE", &cache)
        .env("LCRUN", LCRUN)
        .args(["--no-cache", "--", "unshare", "-m", "sh", "-ec"])
        .arg(format!(
            "mount -t tmpfs -o size={size} tmpfs \"$CACHE\"\n{script}"
        ))
        .output()
        .unwrap()
}

#[test]
fn full_disk_keeps_the_commands_output_and_status() {
    let env = Env::new();
    env.write(
        "data",
        (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    );
    // 3 MB of noise into a 256 KiB cache: the store fills up mid-run.
    let out = with_tmpfs_cache(
        &env,
        "256k",
        "for i in 1 2; do \"$LCRUN\" -- sh -c 'cat data; echo tail >&2; exit 4' > out.$i 2> err.$i || echo \"status $?\" >> statuses; done",
    );
    assert_code(&out, 0);
    let data = std::fs::read(env.path("data")).unwrap();
    for i in 1..=2 {
        assert!(
            std::fs::read(env.path(&format!("out.{i}"))).unwrap() == data,
            "run {i}: stdout damaged"
        );
        let err = std::fs::read_to_string(env.path(&format!("err.{i}"))).unwrap();
        assert!(err.contains("tail\n"), "run {i}: {err}");
    }
    assert_eq!(
        std::fs::read_to_string(env.path("statuses")).unwrap(),
        "status 4\nstatus 4\n"
    );
    // With exit 0 and --cache-failures off the same holds; and the warning is one line.
    let out = with_tmpfs_cache(
        &env,
        "256k",
        "\"$LCRUN\" -- cat data > out.ok 2> err.ok; echo $? > status.ok",
    );
    assert_code(&out, 0);
    assert!(std::fs::read(env.path("out.ok")).unwrap() == data);
    assert_eq!(std::fs::read_to_string(env.path("status.ok")).unwrap(), "0\n");
    let warnings = std::fs::read_to_string(env.path("err.ok")).unwrap();
    assert_eq!(warnings.lines().count(), 1, "{warnings}");
    assert!(warnings.starts_with("lcrun: "), "{warnings}");
}

#[test]
fn read_only_cache_keeps_the_commands_output_and_status() {
    let env = Env::new();
    let out = with_tmpfs_cache(
        &env,
        "4m",
        "\"$LCRUN\" -- sh -c 'echo stored' > /dev/null\n\
         mount -o remount,ro \"$CACHE\"\n\
         \"$LCRUN\" -- sh -c 'echo other; exit 5' > out.1 2> err.1 || echo $? > status.1\n\
         \"$LCRUN\" -- sh -c 'echo stored' > out.2 2> err.2; echo $? > status.2",
    );
    assert_code(&out, 0);
    assert_eq!(std::fs::read_to_string(env.path("out.1")).unwrap(), "other\n");
    assert_eq!(std::fs::read_to_string(env.path("status.1")).unwrap(), "5\n");
    assert_eq!(std::fs::read_to_string(env.path("out.2")).unwrap(), "stored\n");
    assert_eq!(std::fs::read_to_string(env.path("status.2")).unwrap(), "0\n");
    for i in 1..=2 {
        let err = std::fs::read_to_string(env.path(&format!("err.{i}"))).unwrap();
        assert!(
            err.lines().all(|l| l.starts_with("lcrun: ")) && err.lines().count() <= 1,
            "{err}"
        );
    }
}

#[test]
fn a_waiter_shows_the_running_jobs_progress() {
    assert_a_waiter_shows_progress(&Env::new());
}

#[test]
fn a_damaged_jobs_db_is_replaced() {
    let env = Env::new();
    std::fs::create_dir_all(&env.cache).unwrap();
    std::fs::write(env.cache.join("jobs.db"), vec![b'x'; 8192]).unwrap();
    assert_a_waiter_shows_progress(&env);
}

/// An owner reports progress 1/4..4/4; a waiter started after it shows
/// that progress, then replays its output.
fn assert_a_waiter_shows_progress(env: &Env) {
    let script = format!(
        "{}; for i in 1 2 3 4; do lcrun progress $i/4 part$i; sleep 0.4; done; echo built",
        env.tally("runs")
    );
    let owner = env.start(["--", "sh", "-c", &script]);
    std::thread::sleep(Duration::from_millis(300));
    let waiter = env.run(["--interval", "200ms", "--", "sh", "-c", &script]);
    let owner = owner.wait_with_output().unwrap();
    assert_code(&waiter, 0);
    assert_eq!(stdout(&waiter), "built\n");
    assert_eq!(stdout(&owner), "built\n");
    assert_eq!(stderr(&owner), "");
    assert_eq!(env.count("runs"), 1);
    let err = stderr(&waiter);
    assert!(err.contains("lcrun: waiting for an identical run"), "{err}");
    let seen: Vec<_> = err
        .lines()
        .filter(|l| l.starts_with("lcrun: waiting ") && l.contains("/4 part"))
        .collect();
    assert!(
        seen.len() >= 2,
        "the waiter did not show the owner's progress:\n{err}"
    );
}

#[test]
fn a_command_that_fails_to_start_leaves_no_running_job() {
    let env = Env::new();
    // Executable, so it resolves; its interpreter is missing, so exec fails.
    env.script("broken.sh", "#!/nonexistent/interpreter\necho never\n");
    let out = env.run(["--", "./broken.sh"]);
    assert_code(&out, 127);
    assert!(
        stderr(&out).starts_with("lcrun: ./broken.sh: "),
        "{}",
        stderr(&out)
    );
    let conn = rusqlite::Connection::open(env.cache.join("jobs.db")).unwrap();
    let states: Vec<String> = conn
        .prepare("SELECT state FROM jobs")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(states, ["failed"]);
}

/// About 15 MB of numbers, counted under "big": many blobs, in files.
fn big_output(env: &Env, tail: &str) -> [String; 4] {
    let script = format!("{}; seq 1 2000000{tail}", env.tally("big"));
    ["--".into(), "sh".into(), "-c".into(), script]
}

#[test]
fn large_outputs_keep_their_blobs_in_files_and_a_refresh_or_failure_adds_none() {
    let env = Env::new();
    let args = big_output(&env, "");
    let first = env.run(&args);
    assert_code(&first, 0);
    assert_eq!(first.stdout.len(), 14_888_896);
    let files = env.blob_files();
    assert_eq!(files.len(), 1, "{files:?}");
    let hit = env.run(&args);
    assert!(hit.stdout == first.stdout, "replay differs");
    assert_eq!(env.count("big"), 1);

    // A refresh replaces the entry; the same bytes are the same blobs,
    // kept whole through the replacement.
    let mut refresh = vec!["--refresh".to_string()];
    refresh.extend(args.iter().cloned());
    assert_code(&env.run(&refresh), 0);
    assert_eq!(env.count("big"), 2);
    assert_eq!(env.blob_files(), files);
    assert!(env.run(&args).stdout == first.stdout);
    assert_eq!(env.count("big"), 2);

    // A failure is not cached, and leaves no file behind.
    let failing = big_output(&env, "; echo other; exit 3");
    assert_code(&env.run(&failing), 3);
    assert_eq!(env.blob_files(), files);
}

#[test]
fn a_missing_blob_file_runs_the_command_again() {
    let env = Env::new();
    let args = big_output(&env, "");
    let first = env.run(&args);
    assert_code(&first, 0);
    for file in env.blob_files() {
        std::fs::remove_file(file).unwrap();
    }
    let again = env.run(&args);
    assert_code(&again, 0);
    assert!(again.stdout == first.stdout, "output differs");
    assert_eq!(env.count("big"), 2);
    let err = stderr(&again);
    assert!(
        err.contains("lcrun: cached output was damaged") && err.contains("missing"),
        "{err}"
    );
    // Stored afresh: the next run is a hit.
    let hit = env.run(&args);
    assert!(hit.stdout == first.stdout);
    assert_eq!(env.count("big"), 2);
}

#[test]
fn a_blob_file_cut_short_is_found_before_any_byte_and_recomputed() {
    let env = Env::new();
    let args = big_output(&env, "");
    let first = env.run(&args);
    assert_code(&first, 0);
    let files = env.blob_files();
    // Its last blobs are cut: found before the first byte goes out.
    let file = std::fs::OpenOptions::new().write(true).open(&files[0]).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len / 2).unwrap();
    drop(file);
    // Blob files' sizes are checked before the first byte goes out, so
    // the cut is a miss: the command runs, its output whole and once.
    let cut = env.run(&args);
    assert_code(&cut, 0);
    assert!(cut.stdout == first.stdout, "output differs");
    let err = stderr(&cut);
    assert!(
        err.starts_with("lcrun: cached output was damaged") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(env.count("big"), 2);
    // Stored afresh: the next run is a hit.
    let again = env.run(&args);
    assert_code(&again, 0);
    assert!(again.stdout == first.stdout);
    assert_eq!(env.count("big"), 2);
    assert!(!files.is_empty() && !env.blob_files().is_empty());
}
