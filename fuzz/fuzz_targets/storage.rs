//! Fuzz target for what Ember reads from disks and configuration files: the kickstart parser (with
//! `%include` served from the input itself), the config store's slot decoder, the stored host
//! configuration, and the JSON form of the network settings. Any panic, overflow or out-of-bounds access is a finding.
#![no_main]

use ember_storage::block::{BlockDevice, MemDisk};
use ember_storage::config_store::ConfigStore;
use ember_storage::hostconfig::HostConfig;
use ember_storage::kickstart;
use ember_storage::netconfig::ManagementConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => {
            // Kickstart text; any `%include x` reads the same text again (bounded by the depth limit).
            let Ok(text) = std::str::from_utf8(rest) else { return };
            let owned = text.to_string();
            let mut reader = |_: &str| Ok(owned.clone());
            let _ = kickstart::parse("ks.cfg", text, &mut reader);
        }
        1 => {
            // A config partition image of 16 blocks: load, then a save must leave something loadable.
            let mut image = rest.to_vec();
            image.resize(16 * 512, 0);
            let mut disk = MemDisk::from_bytes(512, image);
            let store = ConfigStore::new(0, disk.num_blocks()).unwrap();
            let before = store.load(&mut disk);
            if store.save(&mut disk, b"{\"format\":1}").is_ok() {
                let after = store.load(&mut disk).expect("a saved store loads");
                assert_eq!(after.expect("a saved store has a configuration").payload, b"{\"format\":1}");
            }
            let _ = before;
        }
        2 => {
            if let Ok(cfg) = HostConfig::decode(rest) {
                assert_eq!(HostConfig::decode(&cfg.encode()).expect("own encoding decodes"), cfg);
            }
        }
        _ => {
            if let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(rest) {
                let mut cfg = ManagementConfig::default();
                if cfg.merge_json(&obj, "network.").is_ok() {
                    let mut again = ManagementConfig::default();
                    again.merge_json(cfg.to_json().as_object().unwrap(), "").expect("own JSON round-trips");
                    assert_eq!(again, cfg);
                }
            }
        }
    }
});
