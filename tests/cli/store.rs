//! The store as records and content-addressed blobs (issue 11): the same
//! bytes stored once, a blob shared by entries outliving any one of them,
//! no visible entry ever missing a blob (SIGKILL mid-store included), a
//! damaged blob a miss, and a record that would write outside its output
//! refused.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::util::{assert_code, noise, stderr, stdout, Env};

/// `lcrun [flags] -o OUT -- sh -c 'tally NAME; cp SRC OUT'`.
fn copy_args(env: &Env, flags: &[&str], name: &str, src: &str, out: &str) -> Vec<String> {
    let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    args.extend(["-o".into(), out.into(), "--".into(), "sh".into(), "-c".into()]);
    args.push(format!("{}; cp {src} {out}", env.tally(name)));
    args
}

fn db(env: &Env) -> rusqlite::Connection {
    rusqlite::Connection::open(env.db()).unwrap()
}

/// Every digest a record names: its stdout, stderr and output files.
fn digests_of(meta: &serde_json::Value, into: &mut BTreeSet<String>) {
    match meta {
        serde_json::Value::Object(map) => {
            for (name, value) in map {
                match (name.as_str(), value) {
                    ("blobs", serde_json::Value::Array(list)) => {
                        into.extend(list.iter().map(|d| d.as_str().unwrap().to_owned()));
                    }
                    _ => digests_of(value, into),
                }
            }
        }
        serde_json::Value::Array(list) => list.iter().for_each(|v| digests_of(v, into)),
        _ => {}
    }
}

/// Fails unless every blob of every visible entry is stored whole: its
/// row, and its bytes in its pack when it has one.
#[track_caller]
fn assert_no_entry_misses_a_blob(env: &Env) {
    let conn = db(env);
    let metas: Vec<String> = conn
        .prepare("SELECT meta FROM entries WHERE key IS NOT NULL")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for meta in metas {
        let mut digests = BTreeSet::new();
        digests_of(&serde_json::from_str(&meta).unwrap(), &mut digests);
        for hex in digests {
            let place: Option<(Option<String>, Option<i64>, Option<i64>)> = conn
                .query_row(
                    &format!("SELECT pack, at, len FROM blobs WHERE digest = x'{hex}'"),
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .ok();
            let Some(place) = place else {
                panic!("an entry names blob {hex}, which is not stored");
            };
            if let (Some(pack), Some(at), Some(len)) = place {
                let path = env.cache.join("blobs").join(&pack);
                let size = fs::metadata(&path).map_or(0, |m| m.len() as i64);
                assert!(size >= at + len, "blob {hex} is not whole in {}", path.display());
            }
        }
    }
}

#[test]
fn the_same_output_twice_is_stored_once() {
    let env = Env::new();
    env.write("src.bin", noise(1 << 20, 1));
    assert_code(&env.run(copy_args(&env, &[], "a", "src.bin", "a.bin")), 0);
    let one = env.blob_files();
    assert_eq!(one.len(), 1, "one pack of four blobs: {one:?}");
    let rows = blob_rows(&env);
    assert_code(&env.run(copy_args(&env, &[], "b", "src.bin", "b.bin")), 0);
    assert_eq!(env.blob_files(), one, "the second copy added no blob");
    assert_eq!(blob_rows(&env), rows);
    // The same bytes as stdout are the same blobs too.
    assert_code(&env.run(["--", "cat", "src.bin"]), 0);
    assert_eq!(env.blob_files(), one);
    assert_eq!(blob_rows(&env), rows);
}

fn blob_rows(env: &Env) -> i64 {
    db(env)
        .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
        .unwrap()
}

/// Where the second large blob of the store is: its digest (hex), pack
/// file, offset and length.
fn a_blob(env: &Env) -> (String, PathBuf, u64, u64) {
    let (digest, pack, at, len): (Vec<u8>, String, i64, i64) = db(env)
        .query_row(
            "SELECT digest, pack, at, len FROM blobs WHERE pack IS NOT NULL ORDER BY at LIMIT 1 OFFSET 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
    (hex, env.cache.join("blobs").join(pack), at as u64, len as u64)
}

#[test]
fn a_blob_shared_by_two_entries_outlives_replacing_or_dropping_one() {
    let env = Env::new();
    let first = noise(1 << 20, 2);
    env.write("src.bin", &first);
    let a = copy_args(&env, &[], "a", "src.bin", "a.bin");
    let b = copy_args(&env, &[], "b", "src.bin", "b.bin");
    assert_code(&env.run(&a), 0);
    assert_code(&env.run(&b), 0);

    // Replacing a (a refresh, with other bytes now) keeps b's blobs whole.
    env.write("src.bin", noise(1 << 20, 3));
    assert_code(
        &env.run(copy_args(&env, &["--refresh"], "a", "src.bin", "a.bin")),
        0,
    );
    assert_eq!(env.count("a"), 2);
    fs::remove_file(env.path("b.bin")).unwrap();
    let out = env.run(&b);
    assert_code(&out, 0);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert_eq!(env.count("b"), 1, "b restored, not run");
    assert!(fs::read(env.path("b.bin")).unwrap() == first);

    // a shares them again; then its record is damaged and dropped (by a
    // read-only run, which stores nothing new): b still restores whole.
    env.write("src.bin", &first);
    assert_code(
        &env.run(copy_args(&env, &["--refresh"], "a", "src.bin", "a.bin")),
        0,
    );
    db(&env)
        .execute(
            "UPDATE entries SET meta = 'not json' WHERE meta LIKE '%a.bin%'",
            [],
        )
        .unwrap();
    let dropped = env.run(copy_args(&env, &["--cache-mode", "ro"], "a", "src.bin", "a.bin"));
    assert_code(&dropped, 0);
    assert!(stderr(&dropped).contains("damaged"), "{}", stderr(&dropped));
    assert_eq!(env.count("a"), 4);
    fs::remove_file(env.path("b.bin")).unwrap();
    assert_code(&env.run(&b), 0);
    assert_eq!(env.count("b"), 1, "b restored, not run");
    assert!(fs::read(env.path("b.bin")).unwrap() == first);
    assert_no_entry_misses_a_blob(&env);
}

/// Damages the store one way.
type Spoil = fn(&Env);

#[test]
fn a_deleted_or_altered_blob_makes_the_next_run_execute_the_command() {
    let env = Env::new();
    let content = noise(1 << 20, 4);
    env.write("src.bin", &content);
    let args = copy_args(&env, &[], "c", "src.bin", "out.bin");
    assert_code(&env.run(&args), 0);
    let spoil: [(&str, Spoil); 2] = [
        ("deleted", |env| {
            let (hex, ..) = a_blob(env);
            db(env)
                .execute(&format!("DELETE FROM blobs WHERE digest = x'{hex}'"), [])
                .unwrap();
        }),
        ("altered", |env| {
            let (_, pack, at, len) = a_blob(env);
            let mut bytes = fs::read(&pack).unwrap();
            bytes[(at + len / 2) as usize] ^= 0x5a;
            fs::write(&pack, bytes).unwrap();
        }),
    ];
    for (n, (what, spoil)) in spoil.iter().enumerate() {
        assert_eq!(blob_rows(&env), 4, "{what}");
        spoil(&env);
        fs::remove_file(env.path("out.bin")).unwrap();
        let out = env.run(&args);
        assert_code(&out, 0);
        assert_eq!(env.count("c"), n + 2, "{what}: the command must run");
        let warned: Vec<_> = stderr(&out)
            .lines()
            .filter(|l| l.starts_with("lcrun:"))
            .map(str::to_owned)
            .collect();
        assert_eq!(warned.len(), 1, "{what}: {warned:?}");
        assert!(fs::read(env.path("out.bin")).unwrap() == content, "{what}");
        // Stored afresh, blob included: the next run restores it.
        fs::remove_file(env.path("out.bin")).unwrap();
        assert_code(&env.run(&args), 0);
        assert_eq!(env.count("c"), n + 2, "{what}: then a hit");
        assert!(fs::read(env.path("out.bin")).unwrap() == content, "{what}");
    }
}

/// Rewrites the one visible record with `change`, and its checksum to
/// match (XXH3-64 of the JSON, seeded with the XXH3-64 of the key seeded
/// with the creation time).
fn rewrite_record(env: &Env, change: impl Fn(&str) -> String) {
    let conn = db(env);
    let (id, key, created_ms, meta): (i64, String, i64, String) = conn
        .query_row(
            "SELECT id, key, created_ms, meta FROM entries WHERE key IS NOT NULL",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    let changed = change(&meta);
    assert_ne!(changed, meta, "the change changed nothing");
    let seed = xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), created_ms as u64);
    let sum = xxhash_rust::xxh3::xxh3_64_with_seed(changed.as_bytes(), seed) as i64;
    conn.execute(
        "UPDATE entries SET meta = ?2, sum = ?3 WHERE id = ?1",
        rusqlite::params![id, changed, sum],
    )
    .unwrap();
}

/// A record changed where it still parses and adds up (a status 0 become
/// 1), moved to another command's key, or given another creation time
/// (never to expire) fails its checksum: one warning, the command runs
/// with its own output and status, and its entry is stored afresh.
#[test]
fn a_record_changed_or_moved_fails_its_checksum() {
    for spoil in ["status", "key", "time"] {
        let env = Env::new();
        let a = format!("{}; echo a", env.tally("a"));
        let b = format!("{}; echo b", env.tally("b"));
        assert_code(&env.run(["--", "sh", "-c", &a]), 0);
        assert_code(&env.run(["--", "sh", "-c", &b]), 0);
        let conn = db(&env);
        let b_row = "meta LIKE '%echo b%'";
        let changed = match spoil {
            "status" => conn.execute(
                &format!(
                    r#"UPDATE entries SET meta = replace(meta, '"status":0', '"status":1') WHERE {b_row}"#
                ),
                [],
            ),
            "time" => conn.execute(
                &format!("UPDATE entries SET created_ms = 9223372036854775807 WHERE {b_row}"),
                [],
            ),
            _ => {
                // a's record under b's key: b would replay "a".
                let key_b: String = conn
                    .query_row(&format!("SELECT key FROM entries WHERE {b_row}"), [], |r| {
                        r.get(0)
                    })
                    .unwrap();
                conn.execute("DELETE FROM entries WHERE key = ?1", [&key_b])
                    .unwrap();
                conn.execute("UPDATE entries SET key = ?1 WHERE meta LIKE '%echo a%'", [&key_b])
            }
        };
        assert_eq!(changed.unwrap(), 1, "{spoil}");
        drop(conn);
        let out = env.run(["--", "sh", "-c", &b]);
        assert_code(&out, 0);
        assert_eq!(out.stdout, b"b\n", "{spoil}");
        assert!(stderr(&out).contains("damaged"), "{spoil}: {}", stderr(&out));
        assert_eq!(env.count("b"), 2, "{spoil}: ran");
        assert_code(&env.run(["--", "sh", "-c", &b]), 0);
        assert_eq!(env.count("b"), 2, "{spoil}: stored afresh");
    }
}

#[test]
fn a_stored_path_with_dotdot_is_refused_on_restore() {
    let env = Env::new();
    let script = format!("{}; mkdir -p out && echo inside > out/f.txt", env.tally("gen"));
    let args = ["-o", "out", "--", "sh", "-c", script.as_str()];
    assert_code(&env.run(args), 0);
    // Planted by someone who writes the cache and knows its checksum: the
    // record passes that, and the restore must still refuse the path.
    rewrite_record(&env, |meta| {
        meta.replace("\"path\":\"f.txt\"", "\"path\":\"../escaped.txt\"")
    });
    fs::remove_dir_all(env.path("out")).unwrap();
    let out = env.run(args);
    assert_code(&out, 125);
    assert!(stderr(&out).contains("refusing"), "{}", stderr(&out));
    assert!(!env.path("escaped.txt").exists(), "written outside the output");
    assert_eq!(env.count("gen"), 1, "nor run instead");
}

#[test]
fn sigkill_during_a_store_of_outputs_leaves_no_entry_with_a_missing_blob() {
    let env = Env::new();
    // 24 MiB of noise in 12 files: the command is done in a moment, and
    // lcrun then hashes, compresses and stores them.
    fs::create_dir(env.path("src")).unwrap();
    for i in 0..12 {
        env.write(&format!("src/f{i}"), noise(2 << 20, 10 + i));
    }
    let script = |n: usize| {
        format!(
            "{}; rm -rf out && cp -r src out && touch done.{n}",
            env.tally("gen")
        )
    };
    let mut killed = 0;
    for n in 0..12 {
        let mut child = env
            .lcrun()
            .args(["--refresh", "-o", "out", "--", "sh", "-c", &script(n)])
            .spawn()
            .unwrap();
        let done = env.path(&format!("done.{n}"));
        let start = Instant::now();
        while !done.exists() && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(2));
        }
        // The store of 24 MiB takes some 30-100 ms: kills land all through
        // it (at 8 ms steps over 8 runs, a loaded suite once saw fewer than
        // half of them land before the store was done).
        std::thread::sleep(Duration::from_millis(4 * n as u64));
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().unwrap();
        killed += usize::from(std::os::unix::process::ExitStatusExt::signal(&status) == Some(9));
        assert_no_entry_misses_a_blob(&env);
    }
    assert!(killed >= 4, "only {killed} of 12 runs were killed mid-store");
    let check: String = db(&env)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    // The next run stores it whole, and the one after restores it.
    let args = ["-o", "out", "--", "sh", "-c", "rm -rf out && cp -r src out"];
    assert_code(&env.run(args), 0);
    fs::remove_dir_all(env.path("out")).unwrap();
    assert_code(&env.run(args), 0);
    for i in 0..12 {
        let path: PathBuf = env.path(&format!("out/f{i}"));
        assert!(fs::read(path).unwrap() == noise(2 << 20, 10 + i as u64));
    }
    assert_no_entry_misses_a_blob(&env);
}

/// A restore that cannot write the outputs (their disk is full) is not
/// damage: the entry stays, the command runs (and meets the full disk
/// itself), and once there is room the next run restores without running.
#[test]
fn a_full_disk_at_the_outputs_keeps_the_entry() {
    let env = Env::new();
    let disk = crate::trust::Tmpfs::mount(&env.path("t"), "8m");
    let content = noise(4 << 20, 6);
    env.write("src.bin", &content);
    let args = copy_args(&env, &[], "c", "src.bin", "t/out.bin");
    assert_code(&env.run(&args), 0);
    fs::remove_file(env.path("t/out.bin")).unwrap();
    fs::write(env.path("t/filler"), vec![0u8; 6 << 20]).unwrap();

    let full = env.run(&args);
    assert_eq!(env.count("c"), 2, "the command ran");
    assert!(
        stderr(&full).contains("No space left on device"),
        "{}",
        stderr(&full)
    );
    assert_eq!(full.status.code(), Some(1), "cp's own failure");

    fs::remove_file(env.path("t/filler")).unwrap();
    let _ = fs::remove_file(env.path("t/out.bin"));
    let hit = env.run(&args);
    assert_code(&hit, 0);
    assert_eq!(env.count("c"), 2, "restored from the entry, not run");
    assert!(fs::read(env.path("t/out.bin")).unwrap() == content);
    drop(disk);
}

/// A full disk partway through restoring several outputs (one written, the
/// next failing) is no reason to fail the call: the command runs and
/// writes them all itself, with one warning. When the first fails, the
/// restore is not tried again and again either.
#[test]
fn a_full_disk_partway_through_the_outputs_runs_the_command_once() {
    let env = Env::new();
    let disk = crate::trust::Tmpfs::mount(&env.path("t"), "8m");
    let content = noise(3 << 20, 7);
    env.write("src.bin", &content);
    let script = format!("{}; cp src.bin t/a.bin && cp src.bin t/b.bin", env.tally("c"));
    let args = ["-o", "t/a.bin", "-o", "t/b.bin", "--", "sh", "-c", &script];
    assert_code(&env.run(args), 0);
    for (filler, case) in [(3 << 20, "a.bin restored, b.bin not"), (6 << 20, "neither")] {
        let runs = env.count("c");
        fs::remove_file(env.path("t/a.bin")).unwrap();
        fs::remove_file(env.path("t/b.bin")).unwrap();
        fs::write(env.path("t/filler"), vec![0u8; filler]).unwrap();
        let out = env.run(args);
        let text = stderr(&out);
        assert_eq!(env.count("c"), runs + 1, "{case}: the command ran once: {text}");
        let warned = text.lines().filter(|l| l.contains("cannot restore")).count();
        assert_eq!(warned, 1, "{case}: {text}");
        assert_ne!(out.status.code(), Some(125), "{case}: {text}");
        fs::remove_file(env.path("t/filler")).unwrap();
    }
    drop(disk);
}

/// A cache whose disk fills while an output is stored says so: the
/// output is fine, the cache is not.
#[test]
fn a_full_cache_disk_while_storing_an_output_names_the_cache() {
    let env = Env::new();
    let _disk = crate::trust::Tmpfs::mount(&env.cache, "2m");
    env.write("src.bin", noise(8 << 20, 8));
    let out = env.run(copy_args(&env, &[], "c", "src.bin", "out.bin"));
    assert_code(&out, 0);
    let text = stderr(&out);
    let said: Vec<&str> = text.lines().filter(|l| l.starts_with("lcrun:")).collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("cannot store it in the cache"), "{said:?}");
    assert!(said[0].contains("No space left on device"), "{said:?}");
}

/// The SHA-256 of each 256 KiB piece of `bytes`, as hex: the names its
/// blobs must have.
fn blob_names(bytes: &[u8]) -> Vec<String> {
    use sha2::Digest as _;
    bytes
        .chunks(256 * 1024)
        .map(|piece| {
            sha2::Sha256::digest(piece)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect()
}

fn blobs_at<'a>(meta: &'a serde_json::Value, pointer: &str) -> Vec<&'a str> {
    let list = meta
        .pointer(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in {meta}"));
    list.as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect()
}

/// Blobs are hashed two at a time on the workers; a digest handed to the
/// other blob of a pair would name bytes wrongly, and a later entry with
/// those bytes would replay the wrong ones. Every blob of a large stdout,
/// stderr and output file (odd counts, a short last blob) is named by
/// the SHA-256 of its own bytes, and a second entry made of one blob from
/// the middle replays exactly that blob.
#[test]
fn every_blob_of_a_large_output_is_named_by_its_own_bytes() {
    let env = Env::new();
    // Distinct 256 KiB pieces, so a swapped name cannot go unseen.
    let bytes = noise(45 * 256 * 1024 + 777, 9);
    env.write("src.bin", &bytes);
    let err = noise(19 * 256 * 1024, 10);
    env.write("err.bin", &err);
    let out = env.run([
        "-o",
        "out.bin",
        "--",
        "sh",
        "-c",
        "cat src.bin; cat err.bin >&2; cp src.bin out.bin",
    ]);
    assert_code(&out, 0);
    assert!(out.stdout == bytes && out.stderr == err, "the run's own output");
    let meta: String = db(&env)
        .query_row("SELECT meta FROM entries WHERE key IS NOT NULL", [], |r| r.get(0))
        .unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert!(
        blobs_at(&meta, "/stdout/blobs") == blob_names(&bytes),
        "stdout's blobs misnamed"
    );
    assert!(
        blobs_at(&meta, "/stderr/blobs") == blob_names(&err),
        "stderr's blobs misnamed"
    );
    let file = "/outputs/outputs/0/entries/0/kind/file/contents/blobs";
    assert!(
        blobs_at(&meta, file) == blob_names(&bytes),
        "out.bin's blobs misnamed"
    );

    // Pieces 1 and 2 were hashed as a pair; an entry whose output is piece
    // 2 alone finds its blob stored, and replays piece 2.
    let piece = &bytes[2 * 256 * 1024..3 * 256 * 1024];
    env.write("piece.bin", piece);
    for round in ["miss", "hit"] {
        let out = env.run(["--", "cat", "piece.bin"]);
        assert_code(&out, 0);
        assert!(out.stdout == piece, "{round}: the piece's own bytes");
    }
}

/// A sparse output is read hole by hole (`SEEK_DATA`), not byte by byte:
/// islands of data on either side of blob boundaries, holes at the start,
/// between and at the end, and a file ending in data all come out as the
/// bytes they are, in the record's blob names and in the restore.
#[test]
fn a_sparse_output_is_stored_as_its_bytes_holes_and_all() {
    use std::io::{Seek, SeekFrom, Write};
    let env = Env::new();
    let blob = 256 * 1024;
    let islands: [(u64, usize); 5] = [
        (100_000, 50),
        (blob - 100, 300),
        (4 * blob + 7, 70_000),
        (9 * blob, blob as usize),
        (13 * blob - 5000, 4000),
    ];
    for (name, size) in [
        ("ends-in-hole.img", 20 * blob + 123),
        ("ends-in-data.img", 13 * blob - 1000),
    ] {
        let mut file = fs::File::create(env.path(name)).unwrap();
        for (i, &(at, len)) in islands.iter().enumerate() {
            file.seek(SeekFrom::Start(at)).unwrap();
            file.write_all(&noise(len, 20 + i as u64)).unwrap();
        }
        file.set_len(size).unwrap();
    }
    let script = format!(
        "{}; cp --sparse=always ends-in-hole.img a.img; cp --sparse=always ends-in-data.img b.img",
        env.tally("gen")
    );
    let args = ["-o", "a.img", "-o", "b.img", "--", "sh", "-c", &script];
    assert_code(&env.run(args), 0);
    let meta: String = db(&env)
        .query_row("SELECT meta FROM entries WHERE key IS NOT NULL", [], |r| r.get(0))
        .unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    for (i, name) in ["a.img", "b.img"].into_iter().enumerate() {
        let bytes = fs::read(env.path(name)).unwrap();
        let pointer = format!("/outputs/outputs/{i}/entries/0/kind/file/contents/blobs");
        assert!(
            blobs_at(&meta, &pointer) == blob_names(&bytes),
            "{name}'s blobs misnamed"
        );
        fs::remove_file(env.path(name)).unwrap();
    }
    assert_code(&env.run(args), 0);
    assert_eq!(env.count("gen"), 1, "restored, not run");
    let same = |what: &str| {
        for (made, name) in [("ends-in-hole.img", "a.img"), ("ends-in-data.img", "b.img")] {
            let (made, restored) = (
                fs::read(env.path(made)).unwrap(),
                fs::read(env.path(name)).unwrap(),
            );
            assert!(made == restored, "{name}: {what}");
        }
    };
    same("restored");
    // In place, the same: left as it is (compared hole by hole). One byte
    // changed in an island, or one byte more of hole: written again.
    use std::os::unix::fs::MetadataExt;
    let inode = |name: &str| fs::metadata(env.path(name)).unwrap().ino();
    let before = (inode("a.img"), inode("b.img"));
    assert_code(&env.run(args), 0);
    assert_eq!(
        (inode("a.img"), inode("b.img")),
        before,
        "rewritten though the same"
    );
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(env.path("a.img"))
        .unwrap();
    file.seek(SeekFrom::Start(4 * blob + 9)).unwrap();
    file.write_all(b"!").unwrap();
    let b_img = fs::OpenOptions::new()
        .write(true)
        .open(env.path("b.img"))
        .unwrap();
    b_img.set_len(13 * blob - 999).unwrap();
    assert_code(&env.run(args), 0);
    assert_eq!(env.count("gen"), 1, "restored, not run");
    same("changed in place, then restored");
}

/// A cache whose schema version was reset (0, or a negative number) while
/// its tables remain is rebuilt like any other older cache, not left
/// failing "table entries already exists" on every run for good.
#[test]
fn a_cache_with_its_version_reset_is_rebuilt() {
    for version in [0, -1] {
        let env = Env::new();
        let script = format!("{}; echo hi", env.tally("c"));
        let args = ["--", "sh", "-c", script.as_str()];
        assert_code(&env.run(args), 0);
        db(&env).pragma_update(None, "user_version", version).unwrap();
        let out = env.run(args);
        assert_code(&out, 0);
        assert!(
            !stderr(&out).contains("cannot open"),
            "version {version}: {}",
            stderr(&out)
        );
        let out = env.run(args);
        assert_code(&out, 0);
        assert_eq!(
            env.count("c"),
            2,
            "version {version}: rebuilt, then a hit: {}",
            stderr(&out)
        );
    }
}

/// A blob row or an entry row holding a value of the wrong type (a text
/// codec, a NULL length, a text id) is that entry's damage: the entry is
/// dropped with one warning and its command runs, while every other entry
/// stays, rather than the whole database moved aside as corrupt.
#[test]
fn a_row_of_the_wrong_type_drops_its_entry_not_the_cache() {
    let spoils = [
        "UPDATE blobs SET codec = '0' WHERE pack IS NOT NULL",
        "UPDATE blobs SET raw_len = NULL WHERE pack IS NOT NULL",
        "UPDATE blobs SET xxh3 = 1.5 WHERE pack IS NOT NULL",
        "UPDATE blobs SET at = 'x' WHERE pack IS NOT NULL",
        "UPDATE entries SET created_ms = 'x' WHERE meta LIKE '%big.bin%'",
        "UPDATE entries SET meta = 123 WHERE meta LIKE '%big.bin%'",
        "UPDATE entries SET meta = NULL WHERE meta LIKE '%big.bin%'",
        "UPDATE entries SET meta = CAST(meta AS BLOB) WHERE meta LIKE '%big.bin%'",
    ];
    for spoil in spoils {
        let env = Env::new();
        env.write("big.bin", noise(3 << 20, 11));
        let big = format!("{}; cat big.bin", env.tally("big"));
        let other = format!("{}; echo other", env.tally("other"));
        assert_code(&env.run(["--", "sh", "-c", &big]), 0);
        assert_code(&env.run(["--", "sh", "-c", &other]), 0);
        let changed = db(&env).execute(spoil, []).unwrap();
        assert!(changed > 0, "{spoil}: changed nothing");
        let listed = env.run(["cache", "list"]);
        assert_code(&listed, 0);
        assert!(
            stdout(&listed).contains("echo other"),
            "{spoil}: {}",
            stdout(&listed)
        );
        let out = env.run(["--", "sh", "-c", &big]);
        assert_code(&out, 0);
        let text = stderr(&out);
        assert!(!text.contains("corrupt"), "{spoil}: {text}");
        assert!(
            out.stdout == fs::read(env.path("big.bin")).unwrap(),
            "{spoil}: output"
        );
        assert_eq!(env.count("big"), 2, "{spoil}: ran again: {text}");
        assert_code(&env.run(["--", "sh", "-c", &other]), 0);
        assert_eq!(env.count("other"), 1, "{spoil}: the other entry was lost");
        assert_code(&env.run(["--", "sh", "-c", &big]), 0);
        assert_eq!(env.count("big"), 2, "{spoil}: stored afresh");
    }
}

/// A pending row (an unfinished record) whose meta is not text, planted or
/// damaged, is removed as abandoned by the next writer; the database and
/// its other entries stay, and `cache clear` still clears.
#[test]
fn a_pending_row_of_the_wrong_type_is_removed_not_the_cache() {
    for meta in ["NULL", "42", "x'7b7d'"] {
        let env = Env::new();
        let other = format!("{}; echo other", env.tally("other"));
        assert_code(&env.run(["--", "sh", "-c", &other]), 0);
        db(&env)
            .execute(
                &format!("INSERT INTO entries (key, meta) VALUES (NULL, {meta})"),
                [],
            )
            .unwrap();
        let out = env.run(["--", "echo", "C"]);
        assert_code(&out, 0);
        assert!(stderr(&out).is_empty(), "{meta}: {}", stderr(&out));
        let pending: i64 = db(&env)
            .query_row("SELECT count(*) FROM entries WHERE key IS NULL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(pending, 0, "{meta}: the planted row stayed");
        assert_code(&env.run(["--", "sh", "-c", &other]), 0);
        assert_eq!(env.count("other"), 1, "{meta}: the other entry was lost");
        assert_code(&env.run(["cache", "clear"]), 0);
        assert_code(&env.run(["--", "sh", "-c", &other]), 0);
        assert_eq!(env.count("other"), 2, "{meta}: cleared");
    }
}

/// The cache's own commands read every row leniently: a key short, not
/// ASCII or not text, a meta or a count of the wrong type (damage, or a
/// planted row) neither fails nor panics `cache list`, `stats` or `clear`.
#[test]
fn the_cache_commands_get_through_rows_of_the_wrong_type() {
    let spoils = [
        "UPDATE entries SET key = 'abc' WHERE meta LIKE '%echo one%'",
        "UPDATE entries SET key = '€€€€€€€€' WHERE meta LIKE '%echo one%'",
        "UPDATE entries SET key = CAST(key AS BLOB) WHERE meta LIKE '%echo one%'",
        "UPDATE entries SET meta = NULL WHERE meta LIKE '%echo one%'",
        "UPDATE entries SET hits = 'x'",
        "UPDATE entries SET bytes = 1.5e300",
    ];
    for spoil in spoils {
        let env = Env::new();
        // A hit of "one" stays in the hit log until a command folds it in.
        for _ in 0..2 {
            assert_code(&env.run(["--", "echo", "one"]), 0);
        }
        assert_code(&env.run(["--", "echo", "two"]), 0);
        assert_eq!(
            db(&env).execute(spoil, []).unwrap(),
            if spoil.contains("WHERE") { 1 } else { 2 },
            "{spoil}"
        );
        for args in [
            &["cache", "stats"][..],
            &["cache", "list"],
            &["cache", "list", "--json"],
            &["cache", "clear", "--scope", "s"],
            &["cache", "clear"],
        ] {
            let out = env.run(args);
            assert_code(&out, 0);
            assert!(stderr(&out).is_empty(), "{spoil}: {args:?}: {}", stderr(&out));
        }
        let left: i64 = db(&env)
            .query_row("SELECT count(*) FROM entries WHERE key IS NOT NULL", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(left, 0, "{spoil}: cleared");
    }
}
