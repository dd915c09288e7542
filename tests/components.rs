//! Each real component, through Kiln's own code: a blob through the
//! registry, a dataset on the ZFS pool, a qcow2 with qemu-img, a container
//! on the engine.

use std::collections::BTreeMap;
use std::path::Path;

use kiln::builders::docker::{self, BuildSpec, SmokeCheck};
use kiln::builders::qemu::img::Img;
use kiln::builders::zfs::driver::Zfs;
use kiln::config::Config;
use kiln::registry::Registry;

mod common;
use common::root;

fn config() -> Config {
    Config::defaults(root()).unwrap()
}

#[tokio::test]
async fn registry_blob_push_and_pull() {
    let reg = Registry::new(&config().registry).unwrap();
    let repo = format!("kiln-test/components-{}", std::process::id());
    let data = bytes::Bytes::from(format!("component check {}", std::process::id()));
    let (digest, size) = reg.push_blob(&repo, data.clone()).await.unwrap();
    assert_eq!(size as usize, data.len());
    assert_eq!(reg.pull_blob(&repo, &digest).await.unwrap(), data.to_vec());
}

#[tokio::test]
async fn zfs_dataset_create_snapshot_destroy() {
    if let Some(why) = common::zfs::unavailable() {
        // services.sh could not run zfs-fuse on this machine and said why.
        common::skip("zfs_dataset_create_snapshot_destroy", &why);
        return;
    }
    let cfg = config();
    let zfs = Zfs::new(&cfg.zfs.hosts[0]);
    assert_eq!(zfs.pool_health().await.unwrap(), "ONLINE");
    let base = format!(
        "{}/test-components-{}",
        cfg.zfs.hosts[0].pool,
        std::process::id()
    );
    zfs.create(&format!("{base}/child"), &[("compression", "on")])
        .await
        .unwrap();
    let list = zfs.list(&base).await.unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let mountpoint = &list[1].1;
    std::fs::write(Path::new(mountpoint).join("hello"), vec![7u8; 300_000]).unwrap();
    assert_eq!(
        zfs.get(&format!("{base}/child"), "compression")
            .await
            .unwrap(),
        "on"
    );
    zfs.snapshot_recursive(&format!("{base}@snap"))
        .await
        .unwrap();
    assert!(zfs.exists(&format!("{base}/child@snap")).await.unwrap());
    assert!(
        zfs.get_number(&format!("{base}/child"), "referenced")
            .await
            .unwrap()
            > 0
    );
    assert!(zfs.clones_of(&base).await.unwrap().is_empty());
    // A clone of the snapshot is "in use" and found.
    let clone = format!(
        "{}/test-components-clone-{}",
        cfg.zfs.hosts[0].pool,
        std::process::id()
    );
    zfs.zfs(&["clone", &format!("{base}/child@snap"), &clone])
        .await
        .unwrap();
    assert_eq!(zfs.clones_of(&base).await.unwrap(), vec![clone.clone()]);
    zfs.destroy_recursive(&clone).await.unwrap();
    zfs.destroy_recursive(&base).await.unwrap();
    assert!(!zfs.exists(&base).await.unwrap());
}

#[tokio::test]
async fn qcow2_create_check_overlay_compact() {
    let img = Img::new(&config().qemu.img);
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    img.create(&base, "1G").await.unwrap();
    let info = img.info(&base).await.unwrap();
    assert_eq!(info.format, "qcow2");
    assert_eq!(info.virtual_size, 1 << 30);
    img.check(&base).await.unwrap();
    let overlay = dir.path().join("overlay.qcow2");
    img.overlay(&base, &overlay).await.unwrap();
    assert_eq!(
        img.info(&overlay)
            .await
            .unwrap()
            .backing_filename
            .as_deref(),
        Some(base.to_str().unwrap())
    );
    let compact = dir.path().join("compact.qcow2");
    img.compact(&base, &compact).await.unwrap();
    assert_eq!(img.info(&compact).await.unwrap().virtual_size, 1 << 30);
    // A file that is not a qcow2 is refused with the path in the error.
    let junk = dir.path().join("junk.qcow2");
    std::fs::write(&junk, b"not a disk").unwrap();
    let e = img.check(&junk).await.unwrap_err().to_string();
    assert!(e.contains("junk.qcow2"), "{e}");
}

#[tokio::test]
async fn container_runs_on_the_engine() {
    let cfg = config();
    let engine = docker::connect(&cfg.docker.hosts[0]).await.unwrap();
    let busybox = std::fs::read(root().join(".kiln/fixtures/busybox-amd64"))
        .expect("run scripts/services.sh up first");
    let reg = Registry::new(&cfg.registry).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = BuildSpec {
        target: "components/container".into(),
        dockerfile: "FROM scratch\nCOPY busybox /bin/busybox\n".into(),
        context: BTreeMap::from([("busybox".to_string(), busybox)]),
        os: "linux".into(),
        arch: kiln::catalogue::Arch::Amd64,
        repository: format!("kiln-test/components-{}", std::process::id()),
        engine_tag: "run".into(),
        parent: None,
        source_date_epoch: 0,
        work_dir: dir.path().join("work"),
        smoke: vec![SmokeCheck {
            argv: vec![
                "/bin/busybox".into(),
                "echo".into(),
                "ran in a container".into(),
            ],
            expect: "ran in a container".into(),
        }],
        log: dir.path().join("build.log"),
        labels: BTreeMap::new(),
        host: "local".into(),
        proxy: None,
        isolation: None,
        no_cache: false,
        auth: Default::default(),
    };
    let r = docker::build(&engine, &reg, &spec).await.unwrap();
    assert!(r.smoke_output.contains("ran in a container"));
    assert!(r.digest.starts_with("sha256:"));
}
