//! The host configuration on the boot media (layer 3 over [`BlockDevice`]): finding Ember's own boot
//! disk among the disks the drivers found, and keeping the [`HostConfig`] in its config store.
//!
//! The boot disk is the one whose GPT holds an Ember layout with an ESP of the unique partition GUID the
//! firmware loaded Ember from. Two disks carrying that GUID (a cloned stick left in the server) are
//! refused rather than guessed between: writing the wrong stick's configuration would be silent damage.
//!
//! Loading takes the newest slot that is intact *and* decodes; an intact slot this build cannot decode
//! (written by a newer build, say) is skipped with a warning and left alone - the next save goes to
//! the other slot, so the older configuration in use is never overwritten by a save.

use crate::block::BlockDevice;
use crate::config_store::{ConfigStore, SlotState, SlotWrite, StoreError};
use crate::gpt::read_gpt;
use crate::hostconfig::HostConfig;
use crate::layout::{identify, EmberLayout};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use gpt_disk_types::Guid;

/// A disk found by a driver.
pub struct Disk {
    /// `vda`, `nvme0`, ... (unique on this host).
    pub name: String,
    /// The driver's name, as reported by the API.
    pub driver: &'static str,
    /// What the device says it is (empty when it does not say).
    pub model: String,
    /// The device's serial number (empty when it has none or does not say).
    pub serial: String,
    pub dev: Box<dyn BlockDevice>,
}

impl Disk {
    /// A disk the device did not describe further.
    pub fn new(name: String, driver: &'static str, dev: Box<dyn BlockDevice>) -> Disk {
        Disk { name, driver, model: String::new(), serial: String::new(), dev }
    }

    /// The same disk with the model and serial number the device reported.
    pub fn described(mut self, model: &str, serial: &str) -> Disk {
        self.model = String::from(model.trim());
        self.serial = String::from(serial.trim());
        self
    }
}

/// Why the boot media was not found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindError {
    /// The firmware did not say which partition Ember was loaded from.
    UnknownBootPartition,
    /// No disk holds an Ember layout with the boot partition.
    NotFound { disks: usize },
    /// Two disks carry the boot partition's GUID (cloned media): neither is used.
    Clones { first: String, second: String },
}

impl fmt::Display for FindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FindError::UnknownBootPartition => {
                write!(f, "the firmware did not identify the partition Ember was loaded from")
            }
            FindError::NotFound { disks } => write!(
                f,
                "none of the {disks} disk(s) with a driver is the boot media (no supported driver for it?)"
            ),
            FindError::Clones { first, second } => write!(
                f,
                "{first} and {second} both carry the boot partition's GUID (cloned media); remove one"
            ),
        }
    }
}

/// Finds the boot media among `disks`: the index and its Ember layout. Disks without a readable GPT
/// or without the Ember layout are skipped.
pub fn find_boot_media(
    disks: &mut [Disk],
    esp_guid: Option<Guid>,
) -> Result<(usize, EmberLayout), FindError> {
    let esp_guid = esp_guid.ok_or(FindError::UnknownBootPartition)?;
    let mut found: Option<(usize, EmberLayout)> = None;
    for i in 0..disks.len() {
        let disk = &mut disks[i];
        let Ok(gpt) = read_gpt(disk.dev.as_mut()) else { continue };
        let Ok(layout) = identify(&gpt, disk.dev.block_size()) else { continue };
        let holds_esp =
            gpt.partitions.iter().any(|p| p.unique_guid == esp_guid && p.first_lba == layout.esp.first_lba);
        if !holds_esp {
            continue;
        }
        if let Some((first, _)) = &found {
            return Err(FindError::Clones {
                first: disks[*first].name.clone(),
                second: disks[i].name.clone(),
            });
        }
        found = Some((i, layout));
    }
    found.ok_or(FindError::NotFound { disks: disks.len() })
}

/// The configuration store on the boot media.
pub struct HostStore {
    pub disk: Disk,
    store: ConfigStore,
    /// The slot and sequence of the configuration in use (loaded or last saved).
    in_use: Option<(usize, u64)>,
    /// Highest sequence number of any intact slot.
    highest: u64,
    /// The encoded configuration in use, to skip unchanged saves.
    current: Option<Vec<u8>>,
    /// A save in progress ([`HostStore::start_save`]).
    writing: Option<Box<SlotWrite>>,
}

/// What loading found.
#[derive(Debug)]
pub struct Loaded {
    /// `None`: nothing was ever saved completely (first boot).
    pub config: Option<HostConfig>,
    /// Slots skipped on the way, in words for the console.
    pub warnings: Vec<String>,
}

fn slot_name(slot: usize) -> char {
    if slot == 0 {
        'A'
    } else {
        'B'
    }
}

impl HostStore {
    /// The store in the config partition of `layout` on `disk`.
    pub fn open(disk: Disk, layout: &EmberLayout) -> Result<Self, StoreError> {
        let c = &layout.config;
        let store = ConfigStore::new(c.first_lba, c.last_lba - c.first_lba + 1)?;
        Ok(HostStore { disk, store, in_use: None, highest: 0, current: None, writing: None })
    }

    /// Reads both slots and takes the newest one that is intact and decodes.
    pub fn load(&mut self) -> Result<Loaded, StoreError> {
        let mut warnings = Vec::new();
        let mut intact = Vec::new();
        let mut states = Vec::new();
        for slot in 0..2 {
            let (state, stored) = self.store.read_slot(self.disk.dev.as_mut(), slot)?;
            if let SlotState::Invalid(why) = &state {
                warnings.push(format!("config store slot {}: {why}; not used", slot_name(slot)));
            }
            states.push(state);
            intact.extend(stored);
        }
        intact.sort_by_key(|s| core::cmp::Reverse(s.sequence));
        self.highest = intact.first().map_or(0, |s| s.sequence);
        for s in &intact {
            match HostConfig::decode(&s.payload) {
                Ok(cfg) => {
                    self.in_use = Some((s.slot, s.sequence));
                    self.current = Some(s.payload.clone());
                    return Ok(Loaded { config: Some(cfg), warnings });
                }
                Err(e) => {
                    states[s.slot] = SlotState::Invalid("intact, but not a configuration this build can use");
                    warnings.push(format!(
                        "config store slot {} (sequence {}) is not a configuration this build can use: {e}; not used",
                        slot_name(s.slot),
                        s.sequence
                    ))
                }
            }
        }
        if intact.is_empty() && states.contains(&SlotState::Blank) {
            return Ok(Loaded { config: None, warnings });
        }
        Err(StoreError::Damaged { slot_a: states[0].clone(), slot_b: states[1].clone() })
    }

    /// Saves `cfg` durably (flushed before returning) into the slot not in use; an unchanged
    /// configuration is not written again. Returns the sequence number of the stored configuration.
    pub fn save(&mut self, cfg: &HostConfig) -> Result<u64, StoreError> {
        if let Some(sequence) = self.start_save(cfg)? {
            return Ok(sequence);
        }
        loop {
            if let Some(done) = self.step_save() {
                return done;
            }
        }
    }

    /// Starts saving `cfg` into the slot not in use, to be carried out by [`HostStore::step_save`]
    /// one device command at a time. `Some(sequence)`: the configuration is the one stored already,
    /// nothing needs writing. A save still in progress is abandoned (its slot stays invalid).
    pub fn start_save(&mut self, cfg: &HostConfig) -> Result<Option<u64>, StoreError> {
        self.writing = None;
        let payload = cfg.encode();
        if let (Some((_, sequence)), Some(current)) = (self.in_use, &self.current) {
            if *current == payload {
                return Ok(Some(sequence));
            }
        }
        let slot = self.in_use.map_or(0, |(slot, _)| 1 - slot);
        let sequence = self.highest.wrapping_add(1);
        self.writing =
            Some(Box::new(self.store.start_write(self.disk.dev.block_size(), slot, sequence, &payload)?));
        Ok(None)
    }

    /// Whether a save is in progress.
    pub fn saving(&self) -> bool {
        self.writing.is_some()
    }

    /// Issues the next device command of the save in progress. `None` while more remain (or when
    /// no save is in progress); then the outcome: the stored sequence number, which is from now
    /// on the configuration in use, or why it failed (the configuration in use stays in force).
    pub fn step_save(&mut self) -> Option<Result<u64, StoreError>> {
        let w = self.writing.as_mut()?;
        match w.step(self.disk.dev.as_mut()) {
            Ok(false) => None,
            Ok(true) => {
                let stored = self.writing.take()?.stored;
                self.in_use = Some((stored.slot, stored.sequence));
                self.highest = stored.sequence;
                self.current = Some(stored.payload);
                Some(Ok(stored.sequence))
            }
            Err(e) => {
                self.writing = None;
                Some(Err(e))
            }
        }
    }

    /// Erases both slots (the header blocks, the one not in use first), so the next boot is a first
    /// boot. A cut in between leaves the configuration in use, intact.
    pub fn erase(&mut self) -> Result<(), StoreError> {
        self.writing = None;
        let first = self.in_use.map_or(0, |(slot, _)| 1 - slot);
        for slot in [first, 1 - first] {
            self.store.clear_slot(self.disk.dev.as_mut(), slot)?;
        }
        self.in_use = None;
        self.highest = 0;
        self.current = None;
        Ok(())
    }

    /// Runs the pending `%firstboot` scripts of `cfg` (the configuration in use, stored with them)
    /// and stores the result without them; `cfg` becomes the result either way. If that store fails
    /// (a power cut, say), the stored configuration still holds the scripts and the next boot runs
    /// them on it: whatever the moment of the cut, the host ends up with their result once.
    /// Returns the scripts' log and the stored sequence.
    pub fn finish_firstboot(&mut self, cfg: &mut HostConfig) -> (Vec<String>, Result<u64, StoreError>) {
        let mut result = cfg.clone();
        let log = crate::script::run_firstboot(&mut result);
        let stored = self.save(&result);
        *cfg = result;
        (log, stored)
    }

    /// Slot (`'A'` or `'B'`) and sequence of the configuration in use.
    pub fn in_use(&self) -> Option<(char, u64)> {
        self.in_use.map(|(slot, seq)| (slot_name(slot), seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDisk;
    use crate::gpt::write_gpt;
    use crate::layout::{gpt_entries, plan};
    use alloc::string::ToString;
    use gpt_disk_types::guid;

    const HASH: &str =
        "$pbkdf2-sha256$100000$AAECAwQFBgcICQoLDA0ODw==$3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhs=";
    const ESP: Guid = guid!("11111111-2222-3333-4444-555555555555");

    /// An Ember medium whose ESP has unique GUID `esp`.
    fn medium(esp: Guid) -> MemDisk {
        let blocks = crate::layout::MIN_MEDIA_SIZE / 512 + 64;
        let mut d = MemDisk::new(512, blocks);
        let layout = plan(512, blocks).unwrap();
        let entries = gpt_entries(&layout, |i| if i == 0 { esp } else { Guid::from_bytes([i as u8; 16]) });
        write_gpt(&mut d, guid!("aaaaaaaa-0000-0000-0000-000000000001"), &entries).unwrap();
        d
    }

    fn disk(name: &str, dev: MemDisk) -> Disk {
        Disk::new(name.to_string(), "mem", Box::new(dev))
    }

    fn store() -> HostStore {
        let mut disks = [disk("vda", medium(ESP))];
        let (_, layout) = find_boot_media(&mut disks, Some(ESP)).unwrap();
        let [d] = disks;
        HostStore::open(d, &layout).unwrap()
    }

    #[test]
    fn finds_the_boot_media_and_refuses_clones() {
        let other = guid!("11111111-2222-3333-4444-666666666666");
        let mut disks =
            [disk("vda", MemDisk::new(512, 4096)), disk("vdb", medium(other)), disk("vdc", medium(ESP))];
        assert_eq!(find_boot_media(&mut disks, Some(ESP)).unwrap().0, 2);
        assert_eq!(find_boot_media(&mut disks, None).unwrap_err(), FindError::UnknownBootPartition);
        let missing = guid!("11111111-2222-3333-4444-777777777777");
        assert_eq!(find_boot_media(&mut disks, Some(missing)).unwrap_err(), FindError::NotFound { disks: 3 });
        let mut clones = [disk("vda", medium(ESP)), disk("vdb", medium(ESP))];
        let e = find_boot_media(&mut clones, Some(ESP)).unwrap_err();
        assert_eq!(e, FindError::Clones { first: "vda".into(), second: "vdb".into() });
        assert!(e.to_string().contains("cloned media"));
    }

    #[test]
    fn firstboot_scripts_take_effect_once_whenever_the_power_is_cut() {
        use crate::block::testing::{CuttingDisk, Shared};
        use crate::hostconfig::PendingScript;
        use alloc::rc::Rc;
        use core::cell::RefCell;
        let open = |dev: Box<dyn BlockDevice>| {
            let mut disks = [Disk::new("vda".to_string(), "mem", dev)];
            let (_, layout) = find_boot_media(&mut disks, Some(ESP)).unwrap();
            let [d] = disks;
            HostStore::open(d, &layout).unwrap()
        };
        let mut first = HostConfig::defaults(HASH.into());
        first.firstboot = alloc::vec![PendingScript {
            source: "ks.cfg:line 4".into(),
            first_line: 5,
            body: "esxcli network ip dns search add -d lab.example\nvim-cmd hostsvc/enable_ssh\n".into(),
        }];
        let mut expected = HostConfig::defaults(HASH.into());
        expected.dns_search = alloc::vec!["lab.example".into()];
        expected.ssh_enabled = true;
        let (mut cut, mut done) = (0, 0);
        for budget in 0..6 {
            for torn in [0, 40, 511] {
                let medium = Shared(Rc::new(RefCell::new(medium(ESP))));
                // The first boot stores the kickstart's configuration with its scripts ...
                let mut s = open(Box::new(medium.clone()));
                assert!(s.load().unwrap().config.is_none());
                assert_eq!(s.save(&first).unwrap(), 1);
                // ... and loses power while it stores their result.
                s.disk.dev =
                    Box::new(CuttingDisk { inner: medium.clone(), budget, torn_bytes: torn, dead: false });
                let mut running = first.clone();
                let (log, stored) = s.finish_firstboot(&mut running);
                assert_eq!(running, expected);
                assert_eq!(log, ["%firstboot ks.cfg:line 4: exit status 0 (2 commands run)"]);
                // The next boot: the scripts' result, or the scripts still pending and run now.
                let mut s = open(Box::new(medium.clone()));
                let mut loaded = s.load().unwrap().config.unwrap();
                if stored.is_ok() {
                    assert_eq!(loaded, expected, "budget {budget} torn {torn}");
                    done += 1;
                } else if loaded != expected {
                    assert_eq!(loaded, first, "budget {budget} torn {torn}: neither before nor after");
                    let (_, stored) = s.finish_firstboot(&mut loaded);
                    assert_eq!(stored.unwrap(), 2);
                    cut += 1;
                }
                assert_eq!(loaded, expected);
                // And after that they never run again.
                let mut s = open(Box::new(medium.clone()));
                let again = s.load().unwrap().config.unwrap();
                assert!(again.firstboot.is_empty());
                assert_eq!(again, expected);
            }
        }
        assert!(cut > 0 && done > 0, "both outcomes seen: {cut} cut, {done} stored");
    }

    #[test]
    fn first_boot_then_saves_alternate_and_reload() {
        let mut s = store();
        let loaded = s.load().unwrap();
        assert!(loaded.config.is_none() && loaded.warnings.is_empty());
        let mut cfg = HostConfig::defaults(HASH.into());
        assert_eq!(s.save(&cfg).unwrap(), 1);
        assert_eq!(s.in_use(), Some(('A', 1)));
        assert_eq!(s.save(&cfg).unwrap(), 1, "unchanged configuration is not written");
        cfg.network.hostname = "esx02".into();
        assert_eq!(s.save(&cfg).unwrap(), 2);
        assert_eq!(s.in_use(), Some(('B', 2)));
        let mut again = HostStore { in_use: None, highest: 0, current: None, writing: None, ..s };
        let loaded = again.load().unwrap();
        assert_eq!(loaded.config.unwrap(), cfg);
        assert_eq!(again.in_use(), Some(('B', 2)));
    }

    #[test]
    fn a_save_in_steps_takes_effect_at_its_last_step_and_a_failed_one_changes_nothing() {
        let mut s = store();
        let mut cfg = HostConfig::defaults(HASH.into());
        assert_eq!(s.save(&cfg).unwrap(), 1);
        cfg.network.hostname = "esx02".into();
        assert_eq!(s.start_save(&cfg).unwrap(), None);
        let mut steps = 0;
        let done = loop {
            assert!(s.saving());
            steps += 1;
            match s.step_save() {
                None => assert_eq!(s.in_use(), Some(('A', 1)), "step {steps}: still the old one"),
                Some(r) => break r,
            }
        };
        assert_eq!(done.unwrap(), 2);
        assert!(steps >= 3, "payload, header and flush are separate steps ({steps})");
        assert!(!s.saving() && s.step_save().is_none());
        assert_eq!(s.in_use(), Some(('B', 2)));
        // Unchanged: nothing to write.
        assert_eq!(s.start_save(&cfg).unwrap(), Some(2));
        assert!(!s.saving());
        // A save that fails half way leaves the configuration in use, and the next one succeeds.
        cfg.keyboard = "German".into();
        assert_eq!(s.start_save(&cfg).unwrap(), None);
        assert!(s.step_save().is_none());
        // The medium turns read-only in the middle of the save.
        let mut failing = MemDisk::new(512, s.disk.dev.num_blocks());
        for lba in 0..s.disk.dev.num_blocks() {
            let mut b = alloc::vec![0u8; 512];
            s.disk.dev.read_blocks(lba, &mut b).unwrap();
            failing.write_blocks(lba, &b).unwrap();
        }
        failing.write_protected = true;
        s.disk.dev = Box::new(failing);
        let e = loop {
            if let Some(r) = s.step_save() {
                break r.unwrap_err();
            }
        };
        assert!(e.to_string().contains("write protected"), "{e}");
        assert_eq!(s.in_use(), Some(('B', 2)));
        assert!(!s.saving());
        let mut again = HostStore { in_use: None, highest: 0, current: None, writing: None, ..s };
        assert_eq!(again.load().unwrap().config.unwrap().keyboard, "US Default");
    }

    #[test]
    fn undecodable_newer_slot_falls_back_and_is_overwritten_not_the_one_in_use() {
        let mut s = store();
        let mut cfg = HostConfig::defaults(HASH.into());
        s.save(&cfg).unwrap();
        // A newer build's configuration in slot B (intact, but a format this build refuses).
        s.store.write_slot(s.disk.dev.as_mut(), 1, 7, br#"{"format":9}"#).unwrap();
        let mut s = HostStore { in_use: None, highest: 0, current: None, writing: None, ..s };
        let loaded = s.load().unwrap();
        assert_eq!(loaded.config.as_ref(), Some(&cfg));
        assert!(loaded.warnings[0].contains("slot B (sequence 7)"), "{:?}", loaded.warnings);
        assert_eq!(s.in_use(), Some(('A', 1)));
        cfg.keyboard = "German".into();
        assert_eq!(s.save(&cfg).unwrap(), 8, "the new sequence is above every intact slot");
        assert_eq!(s.in_use(), Some(('B', 8)));
    }

    #[test]
    fn damaged_store_is_an_error_and_failed_writes_change_nothing() {
        let s = store();
        let mut protected = medium(ESP);
        protected.write_protected = true;
        let mut failing = HostStore {
            disk: Disk::new("vda".into(), "mem", Box::new(protected)),
            store: s.store,
            in_use: None,
            highest: 0,
            current: None,
            writing: None,
        };
        assert!(failing.load().unwrap().config.is_none());
        let e = failing.save(&HostConfig::defaults(HASH.into())).unwrap_err();
        assert!(e.to_string().contains("write protected"), "{e}");
        assert_eq!(failing.in_use(), None);

        // Erasing makes the next load a first boot.
        let mut s = store();
        s.save(&HostConfig::defaults(HASH.into())).unwrap();
        s.erase().unwrap();
        let mut again = HostStore { in_use: None, highest: 0, current: None, writing: None, ..s };
        assert!(again.load().unwrap().config.is_none());

        // Both slots written and both unreadable: damage, reported rather than taken for a first boot.
        let mut s = store();
        s.store.write_slot(s.disk.dev.as_mut(), 0, 1, b"x").unwrap();
        s.store.write_slot(s.disk.dev.as_mut(), 1, 2, b"y").unwrap();
        let mut s = HostStore { in_use: None, highest: 0, current: None, writing: None, ..s };
        let e = s.load().unwrap_err();
        assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
    }
}
