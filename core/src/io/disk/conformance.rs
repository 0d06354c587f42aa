//! The behaviour every [`Disk`] implementation must show when no fault is
//! injected. Each implementation's tests call [`check`], so the in-memory,
//! simulated and real disks cannot drift apart in what they promise.

use super::{join, Disk, DiskError, DiskFile};

/// Exercises `disk` under the directory `root` (created here), panicking on
/// the first departure from the contract.
pub fn check<D: Disk>(disk: &D, root: &str) {
    disk.create_dir_all(root).expect("create_dir_all");
    disk.sync_dir(root).expect("sync_dir");
    let a = join(root, "a");
    let b = join(root, "b");

    assert!(!disk.exists(&a).unwrap(), "fresh path must not exist");
    assert!(matches!(disk.open(&a), Err(DiskError::NotFound(_))));

    let f = disk.create(&a).expect("create");
    assert!(matches!(disk.create(&a), Err(DiskError::AlreadyExists(_))));
    assert!(disk.exists(&a).unwrap());
    assert_eq!(f.len().unwrap(), 0);

    f.write_at(0, b"hello").unwrap();
    f.write_at(8, b"world").unwrap();
    assert_eq!(f.len().unwrap(), 13);
    assert_eq!(f.read_exact_at(0, 13).unwrap(), b"hello\0\0\0world");
    let mut buf = [0u8; 10];
    assert_eq!(
        f.read_at(10, &mut buf).unwrap(),
        3,
        "short read at end of file"
    );
    assert_eq!(&buf[..3], b"rld");
    assert_eq!(f.read_at(13, &mut buf).unwrap(), 0);
    assert!(f.read_exact_at(10, 4).is_err());

    f.write_at(2, b"LL").unwrap();
    f.sync().unwrap();
    assert_eq!(f.read_exact_at(0, 5).unwrap(), b"heLLo");

    f.truncate(4).unwrap();
    assert_eq!(f.len().unwrap(), 4);
    f.truncate(6).unwrap();
    assert_eq!(f.read_exact_at(0, 6).unwrap(), b"heLL\0\0");

    let g = disk.create(&b).unwrap();
    g.write_at(0, b"bee").unwrap();
    g.sync().unwrap();
    assert_eq!(
        disk.list(root).unwrap(),
        vec!["a".to_string(), "b".to_string()]
    );

    // rename replaces the target atomically
    disk.rename(&b, &a).unwrap();
    disk.sync_dir(root).unwrap();
    assert!(!disk.exists(&b).unwrap());
    let reopened = disk.open(&a).unwrap();
    assert_eq!(reopened.read_exact_at(0, 3).unwrap(), b"bee");
    assert_eq!(disk.list(root).unwrap(), vec!["a".to_string()]);

    super::write_file_atomically(disk, &join(root, "ckpt"), b"0\n1\n").unwrap();
    assert_eq!(
        super::read_file(disk, &join(root, "ckpt")).unwrap(),
        b"0\n1\n"
    );
    super::write_file_atomically(disk, &join(root, "ckpt"), b"0\n2\n").unwrap();
    assert_eq!(
        super::read_file(disk, &join(root, "ckpt")).unwrap(),
        b"0\n2\n"
    );

    disk.remove(&a).unwrap();
    assert!(matches!(disk.remove(&a), Err(DiskError::NotFound(_))));
    assert_eq!(disk.list(root).unwrap(), vec!["ckpt".to_string()]);
}
