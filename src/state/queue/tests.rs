//! The queue's retry policy and ordering.

use super::*;

#[test]
fn queue_retries_infra_failures_and_not_recipe_ones() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(&dir.path().join("kiln.db")).unwrap();
    assert!(
        q.enqueue(1, "kiln/opam", "a", "linux", BuilderKind::Docker)
            .unwrap()
    );
    assert!(
        !q.enqueue(2, "kiln/opam", "a", "linux", BuilderKind::Docker)
            .unwrap(),
        "deduplicated"
    );
    assert!(
        q.enqueue(1, "kiln/opam", "b", "linux", BuilderKind::Docker)
            .unwrap()
    );
    let far = Utc::now() + chrono::Duration::hours(2);
    assert!(q.take(BuilderKind::Zfs, far).unwrap().is_none());
    let a = q.take(BuilderKind::Docker, Utc::now()).unwrap().unwrap();
    assert_eq!((a.tag.as_str(), a.attempts), ("a", 1));
    let infra = Finish::Failed {
        kind: FailureKind::Infra,
        error: "connection refused".into(),
        log: None,
    };
    assert_eq!(
        q.finish(&a, &infra, 2, Duration::from_secs(60)).unwrap(),
        "queued"
    );
    // Not due yet: b comes first.
    let b = q.take(BuilderKind::Docker, Utc::now()).unwrap().unwrap();
    assert_eq!(b.tag, "b");
    let recipe = Finish::Failed {
        kind: FailureKind::Recipe,
        error: "build step failed".into(),
        log: Some("/l".into()),
    };
    assert_eq!(
        q.finish(&b, &recipe, 2, Duration::from_secs(60)).unwrap(),
        "failed"
    );
    assert!(q.take(BuilderKind::Docker, Utc::now()).unwrap().is_none());
    let a = q.take(BuilderKind::Docker, far).unwrap().unwrap();
    assert_eq!(a.attempts, 2);
    assert_eq!(
        q.finish(&a, &infra, 2, Duration::from_secs(60)).unwrap(),
        "failed",
        "out of attempts"
    );
    assert_eq!(q.round_counts(1).unwrap(), (0, 0, 0, 2));
    let s = q.stats().unwrap();
    assert_eq!(
        s.failures,
        vec![("infra".to_string(), 2), ("recipe".to_string(), 1)]
    );
    assert_eq!(s.durations[0].2, 3);
    // A tag being built is not taken twice.
    assert!(
        q.enqueue(5, "kiln/opam", "d", "linux", BuilderKind::Docker)
            .unwrap()
    );
    let d1 = q.take(BuilderKind::Docker, Utc::now()).unwrap().unwrap();
    assert!(
        q.enqueue(5, "kiln/opam", "d", "linux", BuilderKind::Docker)
            .unwrap()
    );
    assert!(
        q.take(BuilderKind::Docker, Utc::now()).unwrap().is_none(),
        "d is running"
    );
    q.finish(
        &d1,
        &Finish::Succeeded {
            outcome: "built".into(),
        },
        2,
        Duration::from_secs(1),
    )
    .unwrap();
    let d2 = q.take(BuilderKind::Docker, Utc::now()).unwrap().unwrap();
    q.finish(
        &d2,
        &Finish::Succeeded {
            outcome: "unchanged".into(),
        },
        2,
        Duration::from_secs(1),
    )
    .unwrap();
    // A killed daemon's running job goes back to the queue, uncounted.
    assert!(
        q.enqueue(3, "kiln/opam", "c", "linux", BuilderKind::Docker)
            .unwrap()
    );
    let c = q.take(BuilderKind::Docker, Utc::now()).unwrap().unwrap();
    assert_eq!(c.attempts, 1);
    assert_eq!(q.recover(|| Ok(4)).unwrap(), 1);
    let c = q.take(BuilderKind::Docker, Utc::now()).unwrap().unwrap();
    assert_eq!((c.round, c.attempts), (4, 1));
    q.finish(
        &c,
        &Finish::Succeeded {
            outcome: "built".into(),
        },
        2,
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(q.round_counts(4).unwrap(), (0, 1, 0, 0));
    q.watch_set("k", "v1").unwrap();
    q.watch_set("k", "v2").unwrap();
    assert_eq!(q.watch_get("k").unwrap().as_deref(), Some("v2"));
}
