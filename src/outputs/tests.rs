//! Capture and restore on real files in a temp dir, blobs in a [`DirBlobs`].

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::*;
use crate::blob::dir::DirBlobs;
use crate::blob::{BlobError, BLOB_BYTES};

/// Per relative path: kind, bytes or link target, permission bits.
type Snapshot = BTreeMap<Vec<u8>, (char, Vec<u8>, u32)>;

/// A working directory, a sibling outside it, and a blob store.
struct Scene {
    _root: tempfile::TempDir,
    cwd: PathBuf,
    outside: PathBuf,
    blobs: DirBlobs,
}

impl Scene {
    fn new() -> Scene {
        let root = tempfile::tempdir().unwrap();
        let cwd = root.path().join("work");
        let outside = root.path().join("outside");
        fs::create_dir(&cwd).unwrap();
        fs::create_dir(&outside).unwrap();
        let blobs = DirBlobs::new(&root.path().join("blobs"));
        Scene {
            cwd,
            outside,
            blobs,
            _root: root,
        }
    }

    fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.cwd.join(rel)
    }

    fn write(&self, rel: impl AsRef<Path>, bytes: &[u8], mode: u32) {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn capture(&self, declared: &[DeclaredPath]) -> Result<OutputTree, CaptureError> {
        capture(&self.cwd, declared, &self.blobs, &|| false)
    }

    fn restore(&self, declared: &[DeclaredPath], tree: &OutputTree) -> Result<(), RestoreError> {
        restore(&self.cwd, declared, tree, &self.blobs)
    }
}

fn declared(args: &[&[u8]]) -> Vec<DeclaredPath> {
    let args: Vec<OsString> = args.iter().map(|a| OsString::from_vec(a.to_vec())).collect();
    declare_all(&args).unwrap()
}

/// What a path holds, as `ls -lR` would tell: per relative path, its kind,
/// bytes or link target, and permission bits.
fn snapshot(path: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    fn walk(path: &Path, rel: Vec<u8>, out: &mut Snapshot) {
        let meta = fs::symlink_metadata(path).unwrap();
        let mode = meta.mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(path).unwrap().into_os_string().into_vec();
            out.insert(rel, ('l', target, 0));
        } else if meta.is_dir() {
            out.insert(rel.clone(), ('d', Vec::new(), mode));
            for entry in fs::read_dir(path).unwrap() {
                let entry = entry.unwrap();
                let mut child = rel.clone();
                child.push(b'/');
                child.extend_from_slice(entry.file_name().as_bytes());
                walk(&entry.path(), child, out);
            }
        } else {
            out.insert(rel, ('f', fs::read(path).unwrap(), mode));
        }
    }
    walk(path, Vec::new(), &mut out);
    out
}

/// Files left in `dir` (recursively) whose names say they are temp files.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with(".lcrun-") {
            found.push(entry.path().to_owned());
        }
    }
    found
}

/// A directory output with nested files, an empty directory, an executable,
/// links with a relative and an absolute target, and a non-UTF-8 name; a
/// single-file output beside it, and a link as an output of its own.
fn build_outputs(scene: &Scene) {
    scene.write("site/index.html", b"<h1>hi</h1>\n", 0o644);
    scene.write("site/pages/a/deep.txt", b"deep\n", 0o600);
    scene.write("site/bin/run", b"#!/bin/sh\necho run\n", 0o755);
    scene.write(OsStr::from_bytes(b"site/caf\xe9.txt"), b"latin-1 name\n", 0o644);
    let big: Vec<u8> = (0..2 * BLOB_BYTES + 17).map(|i| (i * 31 % 256) as u8).collect();
    scene.write("site/big.bin", &big, 0o644);
    scene.write("site/empty-file", b"", 0o644);
    fs::create_dir_all(scene.path("site/empty/dir")).unwrap();
    symlink("pages/a/deep.txt", scene.path("site/latest")).unwrap();
    symlink("/etc/hostname", scene.path("site/host")).unwrap();
    symlink("missing/target", scene.path("site/dangling")).unwrap();
    scene.write("report.txt", b"report\n", 0o644);
    symlink("site/index.html", scene.path("current")).unwrap();
}

const ALL: &[&[u8]] = &[b"site", b"report.txt", b"./current"];

#[test]
fn a_tree_of_files_dirs_links_and_odd_names_round_trips_exactly() {
    let scene = Scene::new();
    build_outputs(&scene);
    let decl = declared(ALL);
    let before: Vec<_> = ["site", "report.txt", "current"]
        .iter()
        .map(|p| snapshot(&scene.path(p)))
        .collect();
    let tree = scene.capture(&decl).unwrap();

    // Big repeated parts are stored once; the tree is deterministic.
    assert_eq!(tree, scene.capture(&decl).unwrap());
    assert_eq!(tree.outputs.len(), 3);
    let site = tree
        .outputs
        .iter()
        .find(|o| o.path.as_bytes() == b"site")
        .unwrap();
    assert!(matches!(site.entries[0].kind, Kind::Dir) && site.entries[0].path.as_bytes().is_empty());
    let kinds: Vec<(&[u8], &Kind)> = site
        .entries
        .iter()
        .map(|e| (e.path.as_bytes(), &e.kind))
        .collect();
    assert!(kinds.contains(&(b"empty/dir", &Kind::Dir)));
    assert!(kinds.contains(&(
        b"host",
        &Kind::Symlink {
            target: PathBytes(b"/etc/hostname".to_vec())
        }
    )));
    assert!(site
        .entries
        .iter()
        .any(|e| e.path.as_bytes() == b"bin/run" && matches!(e.kind, Kind::File { executable: true, .. })));

    fs::remove_dir_all(scene.path("site")).unwrap();
    fs::remove_file(scene.path("report.txt")).unwrap();
    fs::remove_file(scene.path("current")).unwrap();
    scene.restore(&decl, &tree).unwrap();

    let after: Vec<_> = ["site", "report.txt", "current"]
        .iter()
        .map(|p| snapshot(&scene.path(p)))
        .collect();
    // Modes come back under the umask, as the command's own files did:
    // compare the executable bits, and everything else exactly.
    let strip = |snaps: &Vec<Snapshot>| {
        snaps
            .iter()
            .map(|snap| {
                snap.iter()
                    .map(|(k, (kind, bytes, mode))| (k.clone(), (*kind, bytes.clone(), mode & 0o100)))
                    .collect::<BTreeMap<_, _>>()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&after), strip(&before));
    assert!(temp_files(&scene.cwd).is_empty());
    // And it captures again to the same tree.
    assert_eq!(scene.capture(&decl).unwrap(), tree);
}

#[test]
fn the_tree_survives_serialization_with_non_utf8_names() {
    let scene = Scene::new();
    build_outputs(&scene);
    let tree = scene.capture(&declared(ALL)).unwrap();
    let json = serde_json::to_string(&tree).unwrap();
    assert!(json.contains("caf%E9.txt"), "{json}");
    assert_eq!(serde_json::from_str::<OutputTree>(&json).unwrap(), tree);
    assert_eq!(tree.size(), (2 * BLOB_BYTES + 17) as u64 + 12 + 5 + 19 + 13 + 7);
    assert_eq!(tree.blobs().count(), 3 + 5);
}

#[test]
fn an_absolute_declared_path_round_trips() {
    let scene = Scene::new();
    let out = scene.outside.join("gen/out.txt");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    fs::write(&out, b"abs\n").unwrap();
    let decl = declared(&[out.as_os_str().as_bytes()]);
    let tree = scene.capture(&decl).unwrap();
    assert_eq!(tree.outputs[0].path.as_bytes(), out.as_os_str().as_bytes());
    fs::remove_dir_all(scene.outside.join("gen")).unwrap();
    scene.restore(&decl, &tree).unwrap();
    assert_eq!(fs::read(&out).unwrap(), b"abs\n");
}

#[test]
fn a_missing_declared_output_is_its_own_error() {
    let scene = Scene::new();
    scene.write("made.txt", b"x", 0o644);
    for path in [&b"not-made.txt"[..], b"no/such/dir/file"] {
        let err = scene.capture(&declared(&[b"made.txt", path])).unwrap_err();
        assert!(
            matches!(&err, CaptureError::Missing(p) if p.as_os_str().as_bytes() == path),
            "{err:?}"
        );
        assert!(err.to_string().contains("did not create it"), "{err}");
    }
    // A dangling link is a link, not a missing output.
    symlink("nowhere", scene.path("dangling")).unwrap();
    assert!(scene.capture(&declared(&[b"dangling"])).is_ok());
}

#[test]
fn a_fifo_is_refused_by_name() {
    let scene = Scene::new();
    fs::create_dir(scene.path("out")).unwrap();
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        scene.path("out/pipe"),
        rustix::fs::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let err = scene.capture(&declared(&[b"out"])).unwrap_err();
    assert!(
        matches!(&err, CaptureError::Unsupported { kind: "fifo", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("out/pipe: is a fifo"), "{err}");
}

#[test]
fn capture_refuses_a_relative_output_reached_through_a_link() {
    let scene = Scene::new();
    fs::create_dir(scene.outside.join("build")).unwrap();
    fs::write(scene.outside.join("build/out.txt"), b"x").unwrap();
    symlink(scene.outside.join("build"), scene.path("build")).unwrap();
    let err = scene.capture(&declared(&[b"build/out.txt"])).unwrap_err();
    assert!(
        matches!(&err, CaptureError::Symlink(p) if p == Path::new("build")),
        "{err:?}"
    );
}

/// A one-file tree captured from `out/f.txt`, with the file then removed.
fn simple_tree(scene: &Scene) -> (Vec<DeclaredPath>, OutputTree) {
    scene.write("out/f.txt", b"payload\n", 0o644);
    let decl = declared(&[b"out"]);
    let tree = scene.capture(&decl).unwrap();
    fs::remove_dir_all(scene.path("out")).unwrap();
    (decl, tree)
}

#[test]
fn stored_paths_with_dotdot_or_absolute_are_refused_before_writing() {
    let scene = Scene::new();
    let (decl, tree) = simple_tree(&scene);
    let evil_dotdot = format!(
        "../../{}/evil",
        scene.outside.file_name().unwrap().to_str().unwrap()
    );
    let evil_abs = scene.outside.join("evil").into_os_string().into_vec();
    for evil in [evil_dotdot.as_bytes(), &evil_abs, b"a/../../x", b"./f", b"a//b"] {
        let mut bad = tree.clone();
        bad.outputs[0].entries[1].path = PathBytes(evil.to_vec());
        let err = scene.restore(&decl, &bad).unwrap_err();
        assert!(matches!(err.cause, RestoreCause::BadRecord(_)), "{err:?}");
        assert!(err.nothing_written(), "{err}");
        assert!(err.to_string().contains("refusing"), "{err}");
    }
    // A record whose output is another path than declared: an absolute one
    // where a relative one was declared.
    let mut bad = tree.clone();
    bad.outputs[0].path = PathBytes(scene.outside.join("out").into_os_string().into_vec());
    let err = scene.restore(&decl, &bad).unwrap_err();
    assert!(matches!(err.cause, RestoreCause::BadRecord(_)), "{err:?}");
    assert!(!scene.path("out").exists());
    assert_eq!(fs::read_dir(&scene.outside).unwrap().count(), 0);
}

#[test]
fn a_symlink_planted_at_a_directory_inside_the_output_is_refused() {
    let scene = Scene::new();
    scene.write("out/sub/f.txt", b"inner\n", 0o644);
    let decl = declared(&[b"out"]);
    let tree = scene.capture(&decl).unwrap();
    fs::remove_dir_all(scene.path("out")).unwrap();
    fs::create_dir(scene.path("out")).unwrap();
    symlink(&scene.outside, scene.path("out/sub")).unwrap();

    let err = scene.restore(&decl, &tree).unwrap_err();
    assert!(matches!(err.cause, RestoreCause::Symlink), "{err:?}");
    assert_eq!(err.path, Path::new("out/sub"));
    assert!(err.to_string().contains("refusing to follow it"), "{err}");
    assert_eq!(
        fs::read_dir(&scene.outside).unwrap().count(),
        0,
        "nothing written outside"
    );

    // The declared path itself, a link where a directory was stored.
    fs::remove_dir_all(scene.path("out")).unwrap();
    symlink(&scene.outside, scene.path("out")).unwrap();
    let err = scene.restore(&decl, &tree).unwrap_err();
    assert!(matches!(err.cause, RestoreCause::Symlink), "{err:?}");
    assert_eq!(
        fs::read_dir(&scene.outside).unwrap().count(),
        0,
        "nothing written outside"
    );
}

#[test]
fn a_symlink_planted_at_a_parent_of_the_declared_path_is_refused() {
    let scene = Scene::new();
    scene.write("build/gen/out.txt", b"x\n", 0o644);
    let decl = declared(&[b"build/gen/out.txt"]);
    let tree = scene.capture(&decl).unwrap();
    fs::remove_dir_all(scene.path("build")).unwrap();
    fs::create_dir(scene.path("build")).unwrap();
    fs::create_dir(scene.outside.join("gen")).unwrap();
    symlink(scene.outside.join("gen"), scene.path("build/gen")).unwrap();

    let err = scene.restore(&decl, &tree).unwrap_err();
    assert!(matches!(err.cause, RestoreCause::Symlink), "{err:?}");
    assert_eq!(err.path, Path::new("build/gen"));
    assert!(err.nothing_written());
    assert_eq!(fs::read_dir(scene.outside.join("gen")).unwrap().count(), 0);
}

#[test]
fn a_file_with_the_same_bytes_is_touched_not_rewritten() {
    let scene = Scene::new();
    scene.write("out.bin", &vec![5u8; BLOB_BYTES + 1], 0o755);
    let decl = declared(&[b"out.bin"]);
    let tree = scene.capture(&decl).unwrap();
    let path = scene.path("out.bin");
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let inode = fs::metadata(&path).unwrap().ino();

    let started = SystemTime::now() - Duration::from_secs(1);
    scene.restore(&decl, &tree).unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.ino(), inode, "not rewritten");
    assert!(meta.modified().unwrap() >= started, "touched");
    assert_eq!(meta.mode() & 0o777, 0o755, "executable bit as stored");

    // Other bytes of the same size: replaced by a new file.
    fs::write(&path, vec![6u8; BLOB_BYTES + 1]).unwrap();
    scene.restore(&decl, &tree).unwrap();
    assert_ne!(fs::metadata(&path).unwrap().ino(), inode);
    assert_eq!(fs::read(&path).unwrap(), vec![5u8; BLOB_BYTES + 1]);
    assert!(temp_files(&scene.cwd).is_empty());
}

#[test]
fn a_missing_blob_is_found_before_anything_is_written() {
    let scene = Scene::new();
    scene.write("gen/out/a.txt", b"first\n", 0o644);
    scene.write("gen/out/b.txt", b"second\n", 0o644);
    let decl = declared(&[b"gen/out"]);
    let tree = scene.capture(&decl).unwrap();
    fs::remove_dir_all(scene.path("gen")).unwrap();
    let Kind::File { contents, .. } = &tree.outputs[0].entries[2].kind else {
        panic!("b.txt is a file")
    };
    fs::remove_file(scene.blobs.path_of(&contents.blobs[0])).unwrap();

    let err = scene.restore(&decl, &tree).unwrap_err();
    assert!(
        matches!(err.cause, RestoreCause::Blob(BlobError::Missing(_))),
        "{err:?}"
    );
    assert!(err.nothing_written());
    assert_eq!(err.path, Path::new("gen/out/b.txt"));
    assert!(err.to_string().contains("(nothing was restored)"), "{err}");
    assert!(!scene.path("gen").exists(), "not even its directories");
}

#[test]
fn a_damaged_blob_leaves_no_file_and_no_temp_file() {
    let scene = Scene::new();
    scene.write("gen/out.txt", b"good bytes\n", 0o644);
    let decl = declared(&[b"gen/out.txt"]);
    let tree = scene.capture(&decl).unwrap();
    fs::remove_dir_all(scene.path("gen")).unwrap();
    let Kind::File { contents, .. } = &tree.outputs[0].entries[0].kind else {
        panic!("a file")
    };
    fs::write(scene.blobs.path_of(&contents.blobs[0]), b"evil bytes\n").unwrap();

    let err = scene.restore(&decl, &tree).unwrap_err();
    assert!(
        matches!(err.cause, RestoreCause::Blob(BlobError::Damaged(_))),
        "{err:?}"
    );
    assert!(err.nothing_written());
    assert!(
        !scene.path("gen").exists(),
        "the directory made for it is taken back"
    );
    assert!(temp_files(&scene.cwd).is_empty());

    // Once something was put in place, the error says so.
    scene.write("gen/a.txt", b"a\n", 0o644);
    scene.write("gen/z.txt", b"z\n", 0o644);
    let decl = declared(&[b"gen"]);
    let tree = scene.capture(&decl).unwrap();
    fs::remove_dir_all(scene.path("gen")).unwrap();
    let Kind::File { contents, .. } = &tree.outputs[0].entries[2].kind else {
        panic!("z.txt is a file")
    };
    fs::write(scene.blobs.path_of(&contents.blobs[0]), b"Z\n").unwrap();
    let err = scene.restore(&decl, &tree).unwrap_err();
    assert!(!err.nothing_written(), "{err}");
    assert!(!scene.path("gen/z.txt").exists());
}

#[test]
fn a_restore_keeps_other_files_and_replaces_files_in_the_way() {
    let scene = Scene::new();
    scene.write("out/sub/f.txt", b"f\n", 0o644);
    scene.write("out/g.txt", b"g\n", 0o644);
    let decl = declared(&[b"out"]);
    let tree = scene.capture(&decl).unwrap();
    fs::remove_dir_all(scene.path("out")).unwrap();
    // A stray file the command did not write, a file where a directory
    // belongs, a directory where a file belongs.
    scene.write("out/stray.txt", b"mine\n", 0o644);
    scene.write("out/sub", b"not a dir\n", 0o644);
    scene.restore(&decl, &tree).unwrap();
    assert_eq!(fs::read(scene.path("out/stray.txt")).unwrap(), b"mine\n");
    assert_eq!(fs::read(scene.path("out/sub/f.txt")).unwrap(), b"f\n");

    fs::remove_file(scene.path("out/g.txt")).unwrap();
    fs::create_dir(scene.path("out/g.txt")).unwrap();
    let err = scene.restore(&decl, &tree).unwrap_err();
    assert!(matches!(err.cause, RestoreCause::DirInTheWay), "{err:?}");
}

#[test]
fn restored_directories_are_newer_than_before() {
    let scene = Scene::new();
    scene.write("out/f.txt", b"f\n", 0o644);
    let decl = declared(&[b"out"]);
    let tree = scene.capture(&decl).unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::open(scene.path("out"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let started = SystemTime::now() - Duration::from_secs(1);
    scene.restore(&decl, &tree).unwrap();
    assert!(fs::metadata(scene.path("out")).unwrap().modified().unwrap() >= started);
}

#[test]
fn a_link_where_a_file_belongs_is_replaced_not_written_through() {
    let scene = Scene::new();
    scene.write("out/f.txt", b"stored\n", 0o644);
    let decl = declared(&[b"out", b"single.txt"]);
    scene.write("single.txt", b"single\n", 0o644);
    let tree = scene.capture(&decl).unwrap();
    let victim = scene.outside.join("victim");
    fs::write(&victim, b"keep me\n").unwrap();
    fs::remove_file(scene.path("out/f.txt")).unwrap();
    fs::remove_file(scene.path("single.txt")).unwrap();
    symlink(&victim, scene.path("out/f.txt")).unwrap();
    symlink(&victim, scene.path("single.txt")).unwrap();

    scene.restore(&decl, &tree).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"keep me\n");
    for (path, bytes) in [("out/f.txt", &b"stored\n"[..]), ("single.txt", b"single\n")] {
        assert!(!fs::symlink_metadata(scene.path(path))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(scene.path(path)).unwrap(), bytes);
    }
}

/// A file written while it is being stored (a child the command left
/// running truncates or extends it) is refused as changed, not stored as
/// bytes it never held whole.
#[test]
fn a_file_changed_while_it_is_stored_is_refused() {
    for change in ["truncate", "extend", "rewrite"] {
        let scene = Scene::new();
        let len = 4 * BLOB_BYTES + 5;
        scene.write("out.bin", &crate::blob::noise(len, 3), 0o644);
        let path = scene.path("out.bin");
        let reads = std::cell::Cell::new(0);
        // Called before every read: the third one finds the file changed.
        let stop = || {
            reads.set(reads.get() + 1);
            if reads.get() == 3 {
                let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
                match change {
                    "truncate" => file.set_len(BLOB_BYTES as u64).unwrap(),
                    "extend" => file.set_len(len as u64 + 1).unwrap(),
                    _ => {
                        std::thread::sleep(Duration::from_millis(20));
                        std::os::unix::fs::FileExt::write_all_at(&file, b"new", 0).unwrap();
                    }
                }
            }
            false
        };
        let result = capture(&scene.cwd, &declared(&[b"out.bin"]), &scene.blobs, &stop);
        match result {
            Err(CaptureError::Io { source, .. }) => {
                assert!(source.to_string().contains("changed"), "{change}: {source}")
            }
            other => panic!("{change}: {other:?}"),
        }
    }
}
