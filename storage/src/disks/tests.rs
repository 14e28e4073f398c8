use super::*;
use crate::block::testing::Shared;
use crate::block::MemDisk;
use alloc::boxed::Box;
use alloc::rc::Rc;
use core::cell::RefCell;

const MIB: u64 = 1 << 20;

fn shared(bytes: u64) -> Shared {
    Shared(Rc::new(RefCell::new(MemDisk::new(512, bytes / 512))))
}

fn disk(name: &str, dev: &Shared) -> Disk {
    Disk::new(name.into(), "virtio-blk", Box::new(dev.clone())).described("QEMU HARDDISK", "S-1")
}

/// A boot media of `bytes` whose partition table holds one 40 MiB partition (Ember's own).
fn boot_media(bytes: u64) -> Shared {
    let dev = shared(bytes);
    let part = NewPartition {
        type_guid: Guid::from_bytes([7; 16]),
        unique_guid: Guid::from_bytes([8; 16]),
        first_lba: 2048,
        last_lba: 2048 + 40 * 2048 - 1,
        attributes: 0,
        name: "EFI system partition",
    };
    gpt::write_gpt(&mut dev.clone(), Guid::from_bytes([9; 16]), &[part]).unwrap();
    dev
}

fn boot(dev: &Shared) -> Disk {
    Disk::new("usb0".into(), "usb-storage", Box::new(dev.clone())).described("stick", "")
}

#[test]
fn disks_are_classified_and_a_datastore_is_made_on_a_free_one_and_found_again() {
    let (a, b, c) = (shared(128 * MIB), shared(96 * MIB), shared(96 * MIB));
    b.0.borrow_mut().bytes_mut()[5000] = 1; // data without a partition table
    let mut log = Vec::new();
    let mut h = HostDisks::scan(
        vec![disk("vda", &a), disk("vdb", &b), disk("vdc", &c)],
        Some(boot(&boot_media(80 * MIB))),
        7,
        &mut log,
    );
    assert!(log.is_empty(), "{log:?}");
    let d = h.disks();
    assert_eq!(
        d.iter().map(|d| d.used_by.clone()).collect::<Vec<_>>(),
        [UsedBy::BootMedia { datastores: Vec::new() }, UsedBy::Free, UsedBy::Data { at: 5000 }, UsedBy::Free]
    );
    assert_eq!(
        (d[1].model.as_str(), d[1].serial.as_str(), d[1].size_bytes),
        ("QEMU HARDDISK", "S-1", 128 * MIB)
    );

    let r = h.create("datastore1", "vda", false).unwrap();
    assert_eq!((r.name.as_str(), r.disk.as_str()), ("datastore1", "vda"));
    assert!(r.capacity_bytes > 100 * MIB && r.free_bytes == r.capacity_bytes, "{r:?}");
    assert_eq!(h.disks()[1].used_by.to_string(), "datastore \"datastore1\"");
    // Refusals: the name is taken, the disk holds data, the disk does not exist, the boot media.
    assert_eq!(h.create("datastore1", "vdc", false), Err(DisksError::NameTaken("datastore1".into())));
    let e = h.create("two", "vdb", false).unwrap_err();
    assert_eq!(e.to_string(), "disk vdb holds data (no partition table; non-zero bytes at offset 5000); set \"overwrite\": true to erase it");
    assert_eq!(b.0.borrow().bytes()[5000], 1, "nothing written");
    assert_eq!(h.create("two", "vdz", false), Err(DisksError::NoSuchDisk("vdz".into())));
    let e = h.create("two", "usb0", false).unwrap_err();
    assert!(e.to_string().contains("largest free space is 38 MiB"), "{e}");
    assert!(matches!(h.create("a]b", "vdc", false), Err(DisksError::BadName(_))));
    let e = h.create("two", "vda", false).unwrap_err();
    assert!(e.to_string().contains("holds datastore \"datastore1\""), "{e}");
    h.create("two", "vdb", true).unwrap();

    // Files written through `with` are there after a "reboot" (a new scan, disks in another order).
    h.with("datastore1", |ds, dev| {
        let id = ds.create("hello.txt", 1)?;
        ds.write(dev, id, 0, b"hi", 1)?;
        ds.commit(dev)
    })
    .unwrap()
    .unwrap();
    let mut log = Vec::new();
    let again = HostDisks::scan(vec![disk("vdc", &c), disk("vdb", &b), disk("vda", &a)], None, 8, &mut log);
    assert_eq!(log.len(), 2, "{log:?}");
    let names: Vec<(String, String)> = again.datastores().into_iter().map(|d| (d.name, d.disk)).collect();
    assert_eq!(names, [("datastore1".into(), "vda".into()), ("two".into(), "vdb".into())]);
    let mut again = again;
    let size = again.with("datastore1", |ds, _| Ok(ds.stat("hello.txt")?.size)).unwrap().unwrap();
    assert_eq!(size, 2);
    assert_eq!(h.datastore("two").unwrap().uuid, again.datastore("two").unwrap().uuid);
}

#[test]
fn rename_and_remove() {
    let (a, b) = (shared(96 * MIB), shared(96 * MIB));
    let mut log = Vec::new();
    let mut h = HostDisks::scan(vec![disk("vda", &a), disk("vdb", &b)], None, 1, &mut log);
    h.create("one", "vda", false).unwrap();
    h.create("two", "vdb", false).unwrap();
    assert_eq!(h.rename("one", "two"), Err(DisksError::NameTaken("two".into())));
    assert_eq!(h.rename("nope", "x"), Err(DisksError::NoSuchDatastore("nope".into())));
    let r = h.rename("one", "local-ssd").unwrap();
    assert_eq!(r.name, "local-ssd");
    assert!(matches!(h.remove("two", Some("VM web uses it".into())), Err(DisksError::Busy { .. })));
    h.remove("two", None).unwrap();
    assert_eq!(h.disks()[1].used_by, UsedBy::Partitions(Vec::new()));
    let mut log = Vec::new();
    let again = HostDisks::scan(vec![disk("vda", &a), disk("vdb", &b)], None, 2, &mut log);
    let names: Vec<String> = again.datastores().into_iter().map(|d| d.name).collect();
    assert_eq!(names, ["local-ssd"], "the rename is on the disk; the removed datastore is gone");
    // The emptied disk takes a new datastore without overwrite? It has an (empty) partition table:
    // that is something on the disk, so overwrite is needed.
    let mut again = again;
    assert!(matches!(again.create("three", "vdb", false), Err(DisksError::DiskInUse { .. })));
    again.create("three", "vdb", true).unwrap();
}

#[test]
fn a_name_found_twice_is_shown_with_a_suffix_and_a_damaged_datastore_is_reported() {
    let (a, b) = (shared(96 * MIB), shared(96 * MIB));
    let mut log = Vec::new();
    let mut h = HostDisks::scan(vec![disk("vda", &a)], None, 1, &mut log);
    h.create("datastore1", "vda", false).unwrap();
    let mut h2 = HostDisks::scan(vec![disk("vdb", &b)], None, 2, &mut log);
    h2.create("datastore1", "vdb", false).unwrap();
    let mut log = Vec::new();
    let h = HostDisks::scan(vec![disk("vda", &a), disk("vdb", &b)], None, 3, &mut log);
    let names: Vec<String> = h.datastores().into_iter().map(|d| d.name).collect();
    assert_eq!(names, ["datastore1", "datastore1 (2)"]);
    assert!(log[1].contains("its own name is taken"), "{log:?}");
    // Both superblocks of vdb's datastore damaged: reported, and the disk shows it.
    let first = 2048usize * 512;
    for slot in 0..2 {
        b.0.borrow_mut().bytes_mut()[first + slot * 4096 + 200] ^= 1;
    }
    let mut log = Vec::new();
    let h = HostDisks::scan(vec![disk("vda", &a), disk("vdb", &b)], None, 3, &mut log);
    assert_eq!(h.datastores().len(), 1);
    assert!(log.iter().any(|l| l.contains("vdb partition 1: datastore not mounted")), "{log:?}");
    assert_eq!(h.disks()[1].used_by.to_string(), "partitions \"Ember datastore (does not mount)\"");
}

#[test]
fn unfinished_uploads_are_removed_at_mount() {
    let a = shared(96 * MIB);
    let mut h = HostDisks::scan(vec![disk("vda", &a)], None, 1, &mut Vec::new());
    h.create("ds", "vda", false).unwrap();
    h.with("ds", |ds, dev| {
        ds.mkdir_all("iso/x", 1)?;
        let id = ds.create(&format!("iso/x/{UPLOAD_PREFIX}5-0"), 1)?;
        ds.write(dev, id, 0, &[1; 5000], 1)?;
        ds.create("iso/keep.iso", 1)?;
        ds.commit(dev)
    })
    .unwrap()
    .unwrap();
    let mut log = Vec::new();
    let mut h = HostDisks::scan(vec![disk("vda", &a)], None, 2, &mut log);
    assert!(log.iter().any(|l| l.contains("1 unfinished upload(s) removed")), "{log:?}");
    let listed = h.with("ds", |ds, _| ds.list("iso/x")).unwrap().unwrap();
    assert!(listed.is_empty());
    assert!(h.with("ds", |ds, _| ds.stat("iso/keep.iso")).unwrap().is_ok());
    assert_eq!(h.datastore("ds").unwrap().free_bytes, h.datastore("ds").unwrap().capacity_bytes);
}

#[test]
fn a_datastore_goes_into_the_free_space_of_the_boot_media_and_its_partitions_stay() {
    let media = boot_media(600 * MIB);
    let before = gpt::read_gpt(&mut media.clone()).unwrap();
    let mut log = Vec::new();
    let mut h = HostDisks::scan(Vec::new(), Some(boot(&media)), 3, &mut log);
    let e = h.create("local", "usb0", true).unwrap_err();
    assert!(e.to_string().contains("never overwritten"), "{e}");
    assert_eq!(gpt::read_gpt(&mut media.clone()).unwrap().partitions, before.partitions, "nothing written");
    let r = h.create("local", "usb0", false).unwrap();
    assert!(r.capacity_bytes > 500 * MIB && r.disk == "usb0", "{r:?}");
    assert_eq!(h.disks()[0].used_by.to_string(), "boot media and datastore \"local\"");
    let table = gpt::read_gpt(&mut media.clone()).unwrap();
    assert_eq!(table.disk_guid, before.disk_guid);
    assert_eq!(table.partitions[0], before.partitions[0], "Ember's partition is kept");
    assert_eq!(table.partitions.len(), 2);
    assert!(table.partitions[1].first_lba > before.partitions[0].last_lba);
    let e = h.create("more", "usb0", false).unwrap_err();
    assert!(e.to_string().contains("no free space"), "{e}");

    // Found again at the next boot, still as the boot media.
    let mut h = HostDisks::scan(Vec::new(), Some(boot(&media)), 4, &mut log);
    assert_eq!(h.datastores().len(), 1, "{log:?}");
    assert_eq!(h.disks()[0].used_by, UsedBy::BootMedia { datastores: vec!["local".into()] });
    h.remove("local", None).unwrap();
    assert_eq!(gpt::read_gpt(&mut media.clone()).unwrap().partitions, before.partitions);
    assert_eq!(h.disks()[0].used_by, UsedBy::BootMedia { datastores: Vec::new() });
}

/// An 80 MiB image written with `dd` onto a 600 MiB stick: its table ends where the image did,
/// and the datastore takes the space up to the stick's end.
#[test]
fn the_space_beyond_an_image_written_onto_a_larger_stick_is_used() {
    let image = boot_media(80 * MIB);
    let stick = shared(600 * MIB);
    stick.0.borrow_mut().bytes_mut()[..(80 * MIB) as usize].copy_from_slice(image.0.borrow().bytes());
    let mut h = HostDisks::scan(Vec::new(), Some(boot(&stick)), 3, &mut Vec::new());
    let r = h.create("local", "usb0", false).unwrap();
    assert!(r.capacity_bytes > 500 * MIB, "{r:?}");
    let table = gpt::read_gpt(&mut stick.clone()).unwrap();
    assert!(table.warnings.is_empty(), "{:?}", table.warnings);
    assert_eq!(table.partitions.len(), 2);
}
