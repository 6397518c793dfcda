//! Store tests, modeled on etcd's `v2store/store_test.go`, plus the JSON etcd 3.4.23 writes
//! for each action and error (snapshots checked against a real etcd's responses).

use super::*;

/// 2026-11-24T22:17:29.452Z.
const NOW: u64 = 1_795_558_649_452;

fn put(value: &str) -> WriteOp {
    WriteOp::Set {
        value: value.into(),
        dir: false,
        ttl: None,
        refresh: false,
        prev: Preconditions::default(),
    }
}

fn put_ttl(value: &str, ttl: u64) -> WriteOp {
    WriteOp::Set {
        value: value.into(),
        dir: false,
        ttl: Some(ttl),
        refresh: false,
        prev: Preconditions::default(),
    }
}

fn mkdir() -> WriteOp {
    WriteOp::Set {
        value: String::new(),
        dir: true,
        ttl: None,
        refresh: false,
        prev: Preconditions {
            prev_exist: Some(false),
            ..Preconditions::default()
        },
    }
}

fn cond(
    value: &str,
    prev_exist: Option<bool>,
    prev_value: Option<&str>,
    prev_index: Option<u64>,
) -> WriteOp {
    WriteOp::Set {
        value: value.into(),
        dir: false,
        ttl: None,
        refresh: false,
        prev: Preconditions {
            prev_exist,
            prev_value: prev_value.map(Into::into),
            prev_index,
        },
    }
}

fn delete(dir: bool, recursive: bool) -> WriteOp {
    WriteOp::Delete {
        dir,
        recursive,
        prev: Preconditions::default(),
    }
}

fn cad(prev_value: Option<&str>, prev_index: Option<u64>) -> WriteOp {
    WriteOp::Delete {
        dir: false,
        recursive: false,
        prev: Preconditions {
            prev_exist: None,
            prev_value: prev_value.map(Into::into),
            prev_index,
        },
    }
}

fn post(value: &str) -> WriteOp {
    WriteOp::CreateInOrder {
        value: value.into(),
        dir: false,
        ttl: None,
    }
}

fn ok(s: &mut Store, key: &str, op: WriteOp) -> Event {
    s.apply(&Write::new(key, op, NOW))
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn err(s: &mut Store, key: &str, op: WriteOp) -> (ErrorCode, String, u64) {
    let before = s.clone();
    let e = s.apply(&Write::new(key, op, NOW)).expect_err(key);
    assert_eq!(*s, before, "a failed write changes nothing");
    (e.code, e.cause, e.index)
}

fn value(s: &Store, key: &str) -> Option<String> {
    s.get(key, false, false).ok().and_then(|e| e.node.value)
}

fn keys(nodes: &[Node]) -> Vec<&str> {
    nodes.iter().map(|n| n.key.as_str()).collect()
}

#[test]
fn key_normalization_is_go_path_clean() {
    for (raw, clean) in [
        ("", "/"),
        ("/", "/"),
        ("foo", "/foo"),
        ("/foo/", "/foo"),
        ("//foo//bar//", "/foo/bar"),
        ("/foo/./bar", "/foo/bar"),
        ("/foo/../bar", "/bar"),
        ("/../../x", "/x"),
        ("/_hidden/.", "/_hidden"),
    ] {
        assert_eq!(normalize_key(raw), clean, "{raw:?}");
    }
}

#[test]
fn get_value() {
    let mut s = Store::default();
    ok(&mut s, "/foo", put("bar"));
    let e = s.get("/foo", false, false).unwrap();
    assert_eq!(e.action, Action::Get);
    assert_eq!(e.node.key, "/foo");
    assert_eq!(e.node.value.as_deref(), Some("bar"));
    assert_eq!(
        (e.node.created_index, e.node.modified_index, e.etcd_index),
        (1, 1, 1)
    );
    assert_eq!(e.http_status(), 200);
}

#[test]
fn get_directory_lists_one_level_or_all_without_hidden_keys() {
    let mut s = Store::default();
    ok(&mut s, "/foo", mkdir());
    ok(&mut s, "/foo/x", put("X"));
    ok(&mut s, "/foo/_hidden", put("*"));
    ok(&mut s, "/foo/y/a", put("YA"));
    ok(&mut s, "/foo/y/_b", put("YB"));
    ok(&mut s, "/foo/a", put("A"));
    let e = s.get("/foo", false, false).unwrap();
    assert!(e.node.dir && e.node.value.is_none());
    let nodes = e.node.nodes.as_deref().unwrap();
    assert_eq!(keys(nodes), ["/foo/a", "/foo/x", "/foo/y"]);
    assert_eq!(nodes[2].nodes, None, "one level only");
    let e = s.get("/foo", true, true).unwrap();
    let nodes = e.node.nodes.as_deref().unwrap();
    assert_eq!(keys(nodes[2].nodes.as_deref().unwrap()), ["/foo/y/a"]);
    // A hidden key is read by its name.
    assert_eq!(value(&s, "/foo/_hidden").as_deref(), Some("*"));
    // The root lists everything visible at the top.
    let root = s.get("/", false, false).unwrap();
    assert_eq!((root.node.key.as_str(), root.node.created_index), ("/", 0));
    assert_eq!(keys(root.node.nodes.as_deref().unwrap()), ["/foo"]);
}

#[test]
fn get_errors() {
    let mut s = Store::default();
    ok(&mut s, "/foo", put("bar"));
    let e = s.get("/nokey/deeper", false, false).unwrap_err();
    assert_eq!(
        (e.code, e.cause.as_str(), e.index),
        (ErrorCode::KeyNotFound, "/nokey", 1)
    );
    assert_eq!(e.http_status(), 404);
    let e = s.get("/foo/deeper", false, false).unwrap_err();
    assert_eq!((e.code, e.cause.as_str()), (ErrorCode::NotDir, "/foo"));
    assert_eq!(e.http_status(), 400);
}

#[test]
fn create_value_dir_and_intermediate_dirs() {
    let mut s = Store::default();
    let e = ok(&mut s, "/foo", cond("bar", Some(false), None, None));
    assert_eq!((e.action, e.http_status()), (Action::Create, 201));
    assert_eq!(e.prev_node, None);
    let e = ok(&mut s, "/a/b/c", cond("deep", Some(false), None, None));
    assert_eq!(e.node.created_index, 2);
    // Intermediate directories take the new index.
    let a = s.get("/a", false, false).unwrap().node;
    assert!(a.dir);
    assert_eq!((a.created_index, a.modified_index), (2, 2));
    let e = ok(&mut s, "/d", mkdir());
    assert!(e.node.dir && e.node.value.is_none());
    assert_eq!(s.index(), 3);
}

#[test]
fn create_errors() {
    let mut s = Store::default();
    ok(&mut s, "/foo", put("bar"));
    assert_eq!(
        err(&mut s, "/foo", cond("x", Some(false), None, None)),
        (ErrorCode::NodeExist, "/foo".into(), 1)
    );
    assert_eq!(
        err(&mut s, "/foo", mkdir()),
        (ErrorCode::NodeExist, "/foo".into(), 1)
    );
    assert_eq!(
        err(&mut s, "/foo/bar/baz", cond("x", Some(false), None, None)),
        (ErrorCode::NotDir, "/foo".into(), 1)
    );
    assert_eq!(
        err(&mut s, "/", cond("x", Some(false), None, None)),
        (ErrorCode::RootReadOnly, "/".into(), 1)
    );
    assert_eq!(Error::new(ErrorCode::NodeExist, "", 0).http_status(), 412);
    assert_eq!(
        Error::new(ErrorCode::RootReadOnly, "", 0).http_status(),
        400
    );
}

#[test]
fn set_creates_then_replaces() {
    let mut s = Store::default();
    let e = ok(&mut s, "/foo", put("bar"));
    assert_eq!(
        (e.action, e.http_status(), e.etcd_index),
        (Action::Set, 201, 1)
    );
    let e = ok(&mut s, "/foo", put("baz"));
    assert_eq!(
        (e.action, e.http_status(), e.etcd_index),
        (Action::Set, 200, 2)
    );
    assert_eq!(e.prev_node.as_ref().unwrap().value.as_deref(), Some("bar"));
    // A set replaces the node: a new createdIndex.
    assert_eq!((e.node.created_index, e.node.modified_index), (2, 2));
    assert_eq!(value(&s, "/foo").as_deref(), Some("baz"));
    // An empty value is a value.
    ok(&mut s, "/empty", put(""));
    assert_eq!(value(&s, "/empty").as_deref(), Some(""));
}

#[test]
fn set_errors() {
    let mut s = Store::default();
    ok(&mut s, "/dir", mkdir());
    ok(&mut s, "/file", put("x"));
    assert_eq!(
        err(&mut s, "/dir", put("x")),
        (ErrorCode::NotFile, "/dir".into(), 2)
    );
    assert_eq!(
        err(
            &mut s,
            "/dir",
            WriteOp::Set {
                value: String::new(),
                dir: true,
                ttl: None,
                refresh: false,
                prev: Preconditions::default()
            }
        ),
        (ErrorCode::NotFile, "/dir".into(), 2)
    );
    assert_eq!(
        err(&mut s, "/file/sub", put("x")),
        (ErrorCode::NotDir, "/file".into(), 2)
    );
    assert_eq!(
        err(&mut s, "/", put("x")),
        (ErrorCode::RootReadOnly, "/".into(), 2)
    );
    assert_eq!(
        err(&mut s, "", put("x")),
        (ErrorCode::RootReadOnly, "/".into(), 2)
    );
    // dir=true over a key replaces the key with a directory, as etcd does.
    let e = ok(
        &mut s,
        "/file",
        WriteOp::Set {
            value: String::new(),
            dir: true,
            ttl: None,
            refresh: false,
            prev: Preconditions::default(),
        },
    );
    assert!(e.node.dir);
    assert_eq!(e.prev_node.unwrap().value.as_deref(), Some("x"));
}

#[test]
fn update() {
    let mut s = Store::default();
    ok(&mut s, "/foo", put("bar"));
    let e = ok(&mut s, "/foo", cond("baz", Some(true), None, None));
    assert_eq!((e.action, e.http_status()), (Action::Update, 200));
    assert_eq!(
        (e.node.created_index, e.node.modified_index, e.etcd_index),
        (1, 2, 2)
    );
    assert_eq!(e.prev_node.unwrap().value.as_deref(), Some("bar"));
    assert_eq!(value(&s, "/foo").as_deref(), Some("baz"));
    assert_eq!(
        err(&mut s, "/nothere", cond("v", Some(true), None, None)),
        (ErrorCode::KeyNotFound, "/nothere".into(), 2)
    );
    assert_eq!(
        err(&mut s, "/", cond("v", Some(true), None, None)),
        (ErrorCode::RootReadOnly, "/".into(), 2)
    );
}

#[test]
fn update_directory_ttl_only() {
    let mut s = Store::default();
    ok(&mut s, "/dir", mkdir());
    ok(&mut s, "/dir/k", put("v"));
    assert_eq!(
        err(&mut s, "/dir", cond("v", Some(true), None, None)),
        (ErrorCode::NotFile, "/dir".into(), 2)
    );
    let op = WriteOp::Set {
        value: String::new(),
        dir: true,
        ttl: Some(100),
        refresh: false,
        prev: Preconditions {
            prev_exist: Some(true),
            ..Preconditions::default()
        },
    };
    let e = ok(&mut s, "/dir", op);
    assert_eq!(e.action, Action::Update);
    assert!(e.node.dir);
    assert_eq!(
        (e.node.modified_index, e.node.expiration_ms),
        (3, Some(NOW + 100_000))
    );
    // etcd 3.4 leaves the directory's own modifiedIndex alone.
    let d = s.get("/dir", false, false).unwrap().node;
    assert_eq!(
        (d.modified_index, d.expiration_ms),
        (1, Some(NOW + 100_000))
    );
    // An update without a TTL makes the node permanent again.
    ok(
        &mut s,
        "/dir",
        WriteOp::Set {
            value: String::new(),
            dir: true,
            ttl: None,
            refresh: false,
            prev: Preconditions {
                prev_exist: Some(true),
                ..Preconditions::default()
            },
        },
    );
    assert_eq!(s.next_expiry(), None);
    assert!(s.expire(u64::MAX).is_empty());
}

#[test]
fn compare_and_swap() {
    let mut s = Store::default();
    ok(&mut s, "/foo", put("bar"));
    let e = ok(&mut s, "/foo", cond("baz", None, Some("bar"), None));
    assert_eq!((e.action, e.http_status()), (Action::CompareAndSwap, 200));
    assert_eq!((e.node.created_index, e.node.modified_index), (1, 2));
    assert_eq!(e.prev_node.unwrap().value.as_deref(), Some("bar"));
    let e = ok(&mut s, "/foo", cond("qux", None, None, Some(2)));
    assert_eq!(e.node.value.as_deref(), Some("qux"));
    let e = ok(
        &mut s,
        "/foo",
        cond("quux", Some(true), Some("qux"), Some(3)),
    );
    assert_eq!(e.action, Action::CompareAndSwap);
    assert_eq!(
        err(&mut s, "/foo", cond("x", None, Some("nope"), None)),
        (ErrorCode::TestFailed, "[nope != quux]".into(), 4)
    );
    assert_eq!(
        err(&mut s, "/foo", cond("x", None, None, Some(1))),
        (ErrorCode::TestFailed, "[1 != 4]".into(), 4)
    );
    assert_eq!(
        err(&mut s, "/foo", cond("x", None, Some("nope"), Some(1))),
        (ErrorCode::TestFailed, "[nope != quux] [1 != 4]".into(), 4)
    );
    assert_eq!(
        err(&mut s, "/foo", cond("x", None, Some("quux"), Some(1))),
        (ErrorCode::TestFailed, "[1 != 4]".into(), 4)
    );
    assert_eq!(
        err(&mut s, "/missing", cond("x", None, Some("a"), None)),
        (ErrorCode::KeyNotFound, "/missing".into(), 4)
    );
    ok(&mut s, "/dir", mkdir());
    assert_eq!(
        err(&mut s, "/dir", cond("x", None, Some("a"), None)),
        (ErrorCode::NotFile, "/dir".into(), 5)
    );
    assert_eq!(
        err(&mut s, "/", cond("x", None, Some("a"), None)),
        (ErrorCode::RootReadOnly, "/".into(), 5)
    );
    assert_eq!(Error::new(ErrorCode::TestFailed, "", 0).http_status(), 412);
    // prevExist=false wins over prevValue: a create.
    assert_eq!(
        err(&mut s, "/foo", cond("x", Some(false), Some("quux"), None)).0,
        ErrorCode::NodeExist
    );
}

#[test]
fn delete_keys_and_directories() {
    let mut s = Store::default();
    ok(&mut s, "/foo", put("bar"));
    let e = ok(&mut s, "/foo", delete(false, false));
    assert_eq!((e.action, e.http_status()), (Action::Delete, 200));
    assert_eq!(
        (
            e.node.created_index,
            e.node.modified_index,
            e.node.value.as_deref()
        ),
        (1, 2, None)
    );
    assert_eq!(e.prev_node.unwrap().value.as_deref(), Some("bar"));
    assert_eq!(
        err(&mut s, "/foo", delete(false, false)),
        (ErrorCode::KeyNotFound, "/foo".into(), 2)
    );

    ok(&mut s, "/dir", mkdir());
    assert_eq!(
        err(&mut s, "/dir", delete(false, false)),
        (ErrorCode::NotFile, "/dir".into(), 3)
    );
    let e = ok(&mut s, "/dir", delete(true, false));
    assert!(e.node.dir && e.prev_node.unwrap().dir);

    ok(&mut s, "/tree/a/b", put_ttl("1", 10));
    ok(&mut s, "/tree/c", put("2"));
    assert_eq!(
        err(&mut s, "/tree", delete(true, false)),
        (ErrorCode::DirNotEmpty, "/tree".into(), 6)
    );
    assert_eq!(Error::new(ErrorCode::DirNotEmpty, "", 0).http_status(), 403);
    ok(&mut s, "/tree", delete(false, true));
    assert!(s.get("/tree/a/b", false, false).is_err());
    assert_eq!(
        s.next_expiry(),
        None,
        "TTLs below a deleted directory go with it"
    );
    assert_eq!(
        keys(
            s.get("/", true, true)
                .unwrap()
                .node
                .nodes
                .as_deref()
                .unwrap()
        ),
        Vec::<&str>::new()
    );
    assert_eq!(
        err(&mut s, "/", delete(true, true)),
        (ErrorCode::RootReadOnly, "/".into(), 7)
    );
    // A key with dir=true is deleted like a key.
    ok(&mut s, "/k", put("v"));
    ok(&mut s, "/k", delete(true, false));
}

#[test]
fn delete_keeps_siblings_with_similar_names() {
    let mut s = Store::default();
    ok(&mut s, "/a/x", put("1"));
    ok(&mut s, "/a!/x", put("2"));
    ok(&mut s, "/ab/x", put("3"));
    ok(&mut s, "/a/b/c", put("4"));
    ok(&mut s, "/a", delete(false, true));
    assert_eq!(value(&s, "/a!/x").as_deref(), Some("2"));
    assert_eq!(value(&s, "/ab/x").as_deref(), Some("3"));
    assert!(s.get("/a/b", false, false).is_err());
    // Deleting everything leaves a store equal to a fresh one but for index and history.
    ok(&mut s, "/a!", delete(false, true));
    ok(&mut s, "/ab", delete(false, true));
    assert!(s.dirs.is_empty() && s.ttls.is_empty());
}

#[test]
fn compare_and_delete() {
    let mut s = Store::default();
    ok(&mut s, "/foo", put("bar"));
    assert_eq!(
        err(&mut s, "/foo", cad(Some("zzz"), None)),
        (ErrorCode::TestFailed, "[zzz != bar]".into(), 1)
    );
    assert_eq!(
        err(&mut s, "/foo", cad(None, Some(99))),
        (ErrorCode::TestFailed, "[99 != 1]".into(), 1)
    );
    let e = ok(&mut s, "/foo", cad(Some("bar"), Some(1)));
    assert_eq!(
        (e.action, e.node.modified_index, e.node.dir),
        (Action::CompareAndDelete, 2, false)
    );
    assert_eq!(
        err(&mut s, "/foo", cad(Some("bar"), None)),
        (ErrorCode::KeyNotFound, "/foo".into(), 2)
    );
    ok(&mut s, "/queue", mkdir());
    assert_eq!(
        err(&mut s, "/queue", cad(Some("x"), None)),
        (ErrorCode::NotFile, "/queue".into(), 3)
    );
    assert_eq!(
        err(&mut s, "/", cad(Some("x"), None)),
        (ErrorCode::NotFile, String::new(), 3)
    );
}

#[test]
fn in_order_keys() {
    let mut s = Store::default();
    ok(&mut s, "/other", put("x"));
    let e = ok(&mut s, "/queue", post("job1"));
    assert_eq!((e.action, e.http_status()), (Action::Create, 201));
    assert_eq!(e.node.key, "/queue/00000000000000000002");
    let e = ok(&mut s, "/queue", post("job2"));
    assert_eq!(e.node.key, "/queue/00000000000000000003");
    let list = s.get("/queue", false, true).unwrap().node.nodes.unwrap();
    assert_eq!(
        list.iter()
            .map(|n| n.value.as_deref().unwrap())
            .collect::<Vec<_>>(),
        ["job1", "job2"]
    );
    let e = ok(&mut s, "/", post("rootq"));
    assert_eq!(e.node.key, "/00000000000000000004");
    assert_eq!(
        err(&mut s, "/other", post("x")),
        (ErrorCode::NotDir, "/other".into(), 4)
    );
}

#[test]
fn ttl_expiry_in_order() {
    let mut s = Store::default();
    ok(&mut s, "/b", put_ttl("b", 2));
    ok(&mut s, "/a", put_ttl("a", 2));
    ok(&mut s, "/c", put_ttl("c", 1));
    ok(&mut s, "/permanent", put("p"));
    let e = s.get("/c", false, false).unwrap();
    assert_eq!(e.node.expiration_ms, Some(NOW + 1_000));
    assert_eq!(s.next_expiry(), Some(NOW + 1_000));
    assert!(s.expire(NOW + 999).is_empty());
    let expired = s.expire(NOW + 1_000);
    assert_eq!(expired.len(), 1);
    let e = &expired[0];
    assert_eq!(
        (
            e.action,
            e.node.key.as_str(),
            e.node.created_index,
            e.node.modified_index
        ),
        (Action::Expire, "/c", 3, 5)
    );
    assert_eq!(e.prev_node.as_ref().unwrap().value.as_deref(), Some("c"));
    assert_eq!(e.etcd_index, 5);
    // Ties expire in key order.
    let expired = s.expire(NOW + 60_000);
    assert_eq!(
        expired
            .iter()
            .map(|e| (e.node.key.as_str(), e.etcd_index))
            .collect::<Vec<_>>(),
        [("/a", 6), ("/b", 7)]
    );
    assert_eq!(s.next_expiry(), None);
    assert_eq!(value(&s, "/permanent").as_deref(), Some("p"));
    assert_eq!(s.index(), 7);
}

#[test]
fn expiring_directory_takes_its_children() {
    let mut s = Store::default();
    ok(&mut s, "/dir/a", put_ttl("a", 100));
    ok(&mut s, "/dir/b", put("b"));
    ok(
        &mut s,
        "/dir",
        WriteOp::Set {
            value: String::new(),
            dir: true,
            ttl: Some(1),
            refresh: false,
            prev: Preconditions {
                prev_exist: Some(true),
                ..Preconditions::default()
            },
        },
    );
    let expired = s.expire(NOW + 1_000);
    assert_eq!(expired.len(), 1);
    assert!(expired[0].node.dir && expired[0].prev_node.as_ref().unwrap().dir);
    assert_eq!(s.next_expiry(), None);
    assert!(s.get("/dir/a", false, false).is_err());
    assert!(s.expire(u64::MAX).is_empty());
}

#[test]
fn ttl_replaced_cleared_and_refreshed() {
    let mut s = Store::default();
    ok(&mut s, "/k", put_ttl("v", 10));
    // A set without TTL makes it permanent.
    ok(&mut s, "/k", put("v2"));
    assert_eq!(s.next_expiry(), None);
    ok(&mut s, "/k", put_ttl("v3", 10));
    // A CAS without TTL too.
    ok(&mut s, "/k", cond("v4", None, Some("v3"), None));
    assert_eq!(s.next_expiry(), None);
    // Refresh keeps the value, resets the TTL, is flagged and skipped by watches.
    let refresh = WriteOp::Set {
        value: String::new(),
        dir: false,
        ttl: Some(30),
        refresh: true,
        prev: Preconditions::default(),
    };
    let e = ok(&mut s, "/k", refresh.clone());
    assert!(e.refresh);
    assert_eq!(e.node.value.as_deref(), Some("v4"));
    assert_eq!(e.node.expiration_ms, Some(NOW + 30_000));
    assert_eq!(s.next_expiry(), Some(NOW + 30_000));
    assert_eq!(s.watch_history("/k", false, e.etcd_index).unwrap(), None);
    // Refresh through update and CAS keep the value too.
    let e = ok(
        &mut s,
        "/k",
        WriteOp::Set {
            value: String::new(),
            dir: false,
            ttl: Some(40),
            refresh: true,
            prev: Preconditions {
                prev_exist: Some(true),
                ..Preconditions::default()
            },
        },
    );
    assert_eq!(
        (e.action, e.node.value.as_deref(), e.refresh),
        (Action::Update, Some("v4"), true)
    );
    let e = ok(
        &mut s,
        "/k",
        WriteOp::Set {
            value: String::new(),
            dir: false,
            ttl: Some(50),
            refresh: true,
            prev: Preconditions {
                prev_value: Some("v4".into()),
                ..Preconditions::default()
            },
        },
    );
    assert_eq!(
        (e.action, e.node.value.as_deref(), e.refresh),
        (Action::CompareAndSwap, Some("v4"), true)
    );
    assert_eq!(s.next_expiry(), Some(NOW + 50_000));
    // Refreshing a missing key is "key not found".
    assert_eq!(err(&mut s, "/missing", refresh).0, ErrorCode::KeyNotFound);
}

#[test]
fn ttl_zero_and_huge() {
    let mut s = Store::default();
    ok(&mut s, "/zero", put_ttl("v", 0));
    assert_eq!(s.next_expiry(), Some(NOW));
    assert_eq!(s.expire(NOW).len(), 1);
    ok(&mut s, "/huge", put_ttl("v", u64::MAX));
    assert_eq!(s.next_expiry(), Some(u64::MAX));
    // A proposer clock before 2000 means no TTL, as in etcd.
    s.apply(&Write::new("/old", put_ttl("v", 1), 0)).unwrap();
    assert_eq!(
        s.get("/old", false, false).unwrap().node.expiration_ms,
        None
    );
}

#[test]
fn index_moves_only_on_success() {
    let mut s = Store::default();
    ok(&mut s, "/a", put("1"));
    let _ = err(&mut s, "/a", cond("x", Some(false), None, None));
    let _ = err(&mut s, "/b", delete(false, false));
    assert_eq!(s.index(), 1);
    ok(&mut s, "/a", delete(false, false));
    assert_eq!(s.index(), 2);
}

#[test]
fn watch_history_finds_the_first_matching_event() {
    let mut s = Store::default();
    ok(&mut s, "/foo/bar", put("1")); // 1
    ok(&mut s, "/foo/_hidden", put("h")); // 2
    ok(&mut s, "/other", put("o")); // 3
    ok(&mut s, "/foo/bar", put("2")); // 4
    let e = s.watch_history("/foo/bar", false, 1).unwrap().unwrap();
    assert_eq!((e.node.modified_index, e.etcd_index), (1, 4));
    assert_eq!(
        s.watch_history("/foo/bar", false, 2)
            .unwrap()
            .unwrap()
            .index(),
        4
    );
    assert_eq!(
        s.watch_history("/foo", false, 1).unwrap(),
        None,
        "not recursive"
    );
    assert_eq!(
        s.watch_history("/foo", true, 2).unwrap().unwrap().index(),
        2,
        "etcd's history scan, unlike its live watchers, does not skip hidden keys"
    );
    assert_eq!(
        s.watch_history("/fo", true, 1).unwrap(),
        None,
        "recursive is by path"
    );
    assert_eq!(
        s.watch_history("/foo/_hidden", false, 1)
            .unwrap()
            .unwrap()
            .index(),
        2,
        "a hidden key by name"
    );
    assert_eq!(s.watch_history("/", true, 3).unwrap().unwrap().index(), 3);
    assert_eq!(
        s.watch_history("/foo/bar", false, 5).unwrap(),
        None,
        "future"
    );
    assert_eq!(
        s.watch_history("/foo/bar", false, 0).unwrap(),
        None,
        "0 is the next event"
    );
    // Deleting a directory reaches watchers below it.
    ok(&mut s, "/foo", delete(false, true)); // 5
    let e = s
        .watch_history("/foo/bar/deeper", false, 5)
        .unwrap()
        .unwrap();
    assert_eq!((e.action, e.node.key.as_str()), (Action::Delete, "/foo"));
    // etcd's history scan matches a deleted directory by string prefix.
    assert_eq!(
        s.watch_history("/foobar", false, 5)
            .unwrap()
            .unwrap()
            .index(),
        5
    );
    assert_eq!(s.watch_history("/fo", false, 5).unwrap(), None);
}

#[test]
fn event_matches() {
    let ev = |action, key: &str, prev_dir: Option<bool>| Event {
        action,
        node: Node {
            key: key.into(),
            value: None,
            dir: false,
            expiration_ms: None,
            modified_index: 1,
            created_index: 1,
            nodes: None,
        },
        prev_node: prev_dir.map(|dir| Node {
            key: key.into(),
            value: None,
            dir,
            expiration_ms: None,
            modified_index: 1,
            created_index: 1,
            nodes: None,
        }),
        etcd_index: 1,
        refresh: false,
        time_ms: 0,
    };
    let set = ev(Action::Set, "/a/b/c", None);
    assert!(set.matches("/a/b/c", false));
    assert!(!set.matches("/a/b", false));
    assert!(set.matches("/a/b", true));
    assert!(set.matches("/", true));
    assert!(!set.matches("/a/b/c/d", true));
    assert!(!set.matches("/a/bb", true));
    let hidden = ev(Action::Set, "/a/_b/c", None);
    assert!(!hidden.matches("/a", true));
    assert!(
        hidden.matches("/a/_b", true),
        "hidden only relative to the watched key"
    );
    assert!(hidden.matches("/a/_b/c", false));
    let del_dir = ev(Action::Expire, "/a", Some(true));
    assert!(del_dir.matches("/a/b/c", false));
    assert!(!del_dir.matches("/ab", false));
    let del_key = ev(Action::Delete, "/a", Some(false));
    assert!(!del_key.matches("/a/b", false));
    let mut refreshed = ev(Action::Set, "/a", None);
    refreshed.refresh = true;
    assert!(!refreshed.matches("/a", false));
}

#[test]
fn watch_history_keeps_the_last_thousand_events() {
    let mut s = Store::default();
    for i in 0..1_008u64 {
        ok(&mut s, "/k", put(&i.to_string()));
    }
    assert_eq!(s.history.len(), HISTORY_CAPACITY);
    assert_eq!(s.history_start(), 9);
    let e = s.watch_history("/k", false, 5).unwrap_err();
    assert_eq!(e.code, ErrorCode::EventIndexCleared);
    assert_eq!(e.cause, "the requested history has been cleared [9/5]");
    assert_eq!((e.index, e.http_status()), (1_008, 400));
    assert_eq!(
        e.render(),
        "{\"errorCode\":401,\"message\":\"The event in requested index is outdated and cleared\",\"cause\":\"the requested history has been cleared [9/5]\",\"index\":1008}\n"
    );
    assert_eq!(
        s.watch_history("/k", false, 9)
            .unwrap()
            .unwrap()
            .node
            .value
            .as_deref(),
        Some("8")
    );
    assert_eq!(
        s.watch_history("/k", false, 1_008)
            .unwrap()
            .unwrap()
            .node
            .value
            .as_deref(),
        Some("1007")
    );
}

#[test]
fn large_store_lookups_and_listings() {
    let mut s = Store::default();
    for d in 0..100 {
        for k in 0..100 {
            ok(&mut s, &format!("/dir{d:03}/key{k:03}"), put("v"));
        }
    }
    assert_eq!(
        s.get("/dir050", false, false)
            .unwrap()
            .node
            .nodes
            .unwrap()
            .len(),
        100
    );
    assert_eq!(
        s.get("/", false, false).unwrap().node.nodes.unwrap().len(),
        100
    );
    let all = s.get("/", true, false).unwrap().node.nodes.unwrap();
    assert_eq!(
        all.iter()
            .map(|d| d.nodes.as_ref().unwrap().len())
            .sum::<usize>(),
        10_000
    );
    ok(&mut s, "/dir050", delete(false, true));
    assert_eq!(
        s.get("/", false, false).unwrap().node.nodes.unwrap().len(),
        99
    );
}

/// Renders the response an etcd 3.4.23 would send for a write (status and body).
fn response(s: &mut Store, key: &str, op: WriteOp, now_ms: u64) -> String {
    match s.apply(&Write::new(key, op, NOW)) {
        Ok(e) => format!("{} {}", e.http_status(), e.render(now_ms, false)),
        Err(e) => format!("{} {}", e.http_status(), e.render()),
    }
}

#[test]
fn json_for_each_action() {
    let mut s = Store::default();
    let mut out = String::new();
    let mut step = |s: &mut Store, key: &str, op: WriteOp| {
        out.push_str(&format!("{key}: {}", response(s, key, op, NOW + 10)));
    };
    step(&mut s, "/message", put("Hello world!"));
    step(&mut s, "/message", put_ttl("a<b&c>", 5));
    step(&mut s, "/message", cond("v", Some(false), None, None));
    step(&mut s, "/new", cond("v", Some(false), None, None));
    step(&mut s, "/new", cond("v2", Some(true), None, None));
    step(&mut s, "/new", cond("v3", None, Some("v2"), Some(4)));
    step(&mut s, "/new", cad(Some("v3"), None));
    step(&mut s, "/dir/sub/key", put("x"));
    step(
        &mut s,
        "/dir",
        WriteOp::Set {
            value: String::new(),
            dir: true,
            ttl: Some(100),
            refresh: false,
            prev: Preconditions {
                prev_exist: Some(true),
                ..Preconditions::default()
            },
        },
    );
    step(&mut s, "/queue", post("job1"));
    step(&mut s, "/dir", delete(false, true));
    step(&mut s, "/emptydir", mkdir());
    step(&mut s, "/emptydir", delete(true, false));
    let get = |s: &Store, key: &str, recursive| match s.get(key, recursive, true) {
        Ok(e) => format!(
            "{key}: {} {}",
            e.http_status(),
            e.render(NOW + 1_500, false)
        ),
        Err(e) => format!("{key}: {} {}", e.http_status(), e.render()),
    };
    out.push_str(&get(&s, "/message", false));
    out.push_str(&get(&s, "/", true));
    out.push_str(&get(&s, "/queue", false));
    for e in s.expire(NOW + 5_000) {
        out.push_str(&format!("expired: {}", e.render(NOW + 5_000, false)));
    }
    out.push_str(&format!(
        "watch: {}",
        s.watch_history("/dir/sub/key", false, 8)
            .unwrap()
            .unwrap()
            .render(NOW, false)
    ));
    let quiet = s.apply(&Write::new("/quiet", put("v"), NOW)).unwrap();
    out.push_str(&format!("noValueOnSuccess: {}", quiet.render(NOW, true)));
    insta::assert_snapshot!("json_for_each_action", out);
}

#[test]
fn json_for_each_error() {
    let mut s = Store::default();
    let mut out = String::new();
    ok(&mut s, "/message", put("a<b"));
    ok(&mut s, "/dir/sub/key", put("x"));
    ok(&mut s, "/queue", mkdir());
    for (key, op) in [
        ("/nothere", cond("v", Some(true), None, None)),
        ("/message", cond("z", None, Some("nope"), Some(1))),
        ("/dir", put("x")),
        ("/message/deeper", put("x")),
        ("/message", cond("v", Some(false), None, None)),
        ("/", put("x")),
        ("/dir", delete(true, false)),
        ("/queue", cad(Some("zzz"), None)),
    ] {
        out.push_str(&format!("{key}: {}", response(&mut s, key, op, NOW)));
    }
    let e = s.get("/nokey/deeper", false, false).unwrap_err();
    out.push_str(&format!(
        "get /nokey/deeper: {} {}",
        e.http_status(),
        e.render()
    ));
    for (params, method) in [
        (&[("prevValue", "")][..], "PUT"),
        (&[("ttl", "abc")][..], "PUT"),
        (&[("prevIndex", "abc")][..], "PUT"),
        (&[("dir", "maybe")][..], "PUT"),
        (
            &[("refresh", "true"), ("ttl", "1"), ("value", "x")][..],
            "PUT",
        ),
        (&[("refresh", "true")][..], "PUT"),
        (&[("wait", "true")][..], "PUT"),
    ] {
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        let e = v2::parse(method, "/message", &params, NOW, &v2::Limits::default()).unwrap_err();
        out.push_str(&format!(
            "{method} {params:?}: {} {}",
            e.http_status(),
            e.render()
        ));
    }
    insta::assert_snapshot!("json_for_each_error", out);
}

#[test]
fn to_json_values_match_rendered_bytes() {
    let mut s = Store::default();
    let e = ok(&mut s, "/k", put_ttl("v", 5));
    let parsed: serde_json::Value = serde_json::from_str(&e.render(NOW, false)).unwrap();
    assert_eq!(parsed, e.to_json(NOW));
    assert_eq!(e.to_json(NOW)["node"]["ttl"], 5);
    assert_eq!(
        e.to_json(NOW)["node"]["expiration"],
        "2026-11-24T22:17:34.452Z"
    );
    let err = s.get("/nope", false, false).unwrap_err();
    let parsed: serde_json::Value = serde_json::from_str(&err.render()).unwrap();
    assert_eq!(parsed, err.to_json());
    assert_eq!(
        err.to_json(),
        serde_json::json!({"errorCode": 100, "message": "Key not found", "cause": "/nope", "index": 1})
    );
    assert_eq!(
        Error::new(ErrorCode::KeyNotFound, "", 3).to_json(),
        serde_json::json!({"errorCode": 100, "message": "Key not found", "index": 3})
    );
}

#[test]
fn error_display_names_the_cause() {
    let e = Error::new(ErrorCode::KeyNotFound, "/foo", 3);
    assert_eq!(e.to_string(), "etcd error 100: Key not found (/foo)");
}
