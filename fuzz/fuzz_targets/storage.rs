//! Fuzz target for what Ember reads from disks and configuration files: the kickstart parser (with
//! `%include` served from the input itself), the config store's slot decoder, the stored host
//! configuration, the JSON form of the network settings, `ks=` locations, VM definitions and the FAT
//! reader that finds VM disk files on the ESP, and kickstart scripts (parsed and run). A valid kickstart must
//! turn into a configuration (or a named refusal) that stores and loads back unchanged. Any panic,
//! overflow or out-of-bounds access is a finding.
#![no_main]

use ember_net::api::NicInfo;
use ember_net::auth::{PasswordHash, MIN_ITERATIONS};
use ember_net::firstboot;
use ember_storage::block::{BlockDevice, MemDisk};
use ember_storage::config_store::ConfigStore;
use ember_storage::firstboot::{self as sources, KsSource};
use ember_storage::hostconfig::HostConfig;
use ember_storage::kickstart;
use ember_storage::netconfig::ManagementConfig;
use ember_storage::vmdef::VmDefinition;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 7 {
        0 => {
            // Kickstart text; any `%include x` reads the same text again (bounded by the depth limit).
            let Ok(text) = std::str::from_utf8(rest) else { return };
            let owned = text.to_string();
            let mut reader = |_: &str| Ok(owned.clone());
            let Ok(ks) = kickstart::parse("ks.cfg", text, &mut reader) else { return };
            let base =
                HostConfig::defaults(PasswordHash::new("ember-initial", [1; 16], MIN_ITERATIONS).encode());
            let nics = [NicInfo {
                name: "vmnic0".into(),
                mac: [0x52, 0x54, 0, 0, 0, 0x10],
                link: true,
                driver: "fuzz",
            }];
            if let Ok(applied) = firstboot::config_from_kickstart(&ks, &base, &nics, &mut |pw| {
                PasswordHash::new(pw, [2; 16], MIN_ITERATIONS).encode()
            }) {
                // The size of the real config store (1 MiB): pending %firstboot scripts are stored too.
                let mut disk = MemDisk::new(512, 2048);
                let store = ConfigStore::new(0, 2048).unwrap();
                store
                    .save(&mut disk, &applied.config.encode())
                    .expect("a kickstart's configuration fits the store");
                let back = store.load(&mut disk).unwrap().unwrap();
                let mut loaded =
                    HostConfig::decode(&back.payload).expect("a kickstart's configuration decodes");
                assert_eq!(loaded, applied.config);
                // %firstboot runs on it; the result stores and loads back without the scripts.
                let _log = ember_storage::script::run_firstboot(&mut loaded);
                assert!(loaded.firstboot.is_empty());
                assert_eq!(HostConfig::decode(&loaded.encode()).expect("the result decodes"), loaded);
            }
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
        6 => {
            if let Ok(list) = ember_storage::vmdef::parse_first_boot_vms("register.cfg", rest) {
                for p in list {
                    let again = ember_storage::vmdef::DsPath::parse(&p.to_string());
                    assert_eq!(again.as_ref(), Ok(&p), "a listed path prints as it parses");
                }
            }
        }
        5 => {
            if let Ok(d) = VmDefinition::parse("vm.json", rest) {
                for f in d.files() {
                    ember_storage::vmdef::check_file_ref(f).expect("a parsed definition has checked paths");
                }
            }
        }
        4 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(KsSource::Usb(p) | KsSource::File(p)) = KsSource::parse(Some(text)) {
                    sources::check_path(&p).expect("a parsed source has a checked path");
                    let _ = sources::include_path(sources::parent_dir(&p), text);
                }
            }
        }
        _ if rest.first() == Some(&b'#') => {
            // A script on its own: what parses runs on a configuration that stays valid.
            let Ok(text) = std::str::from_utf8(rest) else { return };
            if let Ok(script) = ember_storage::script::parse(text, 1) {
                let mut cfg = HostConfig::defaults(
                    PasswordHash::new("ember-initial", [1; 16], MIN_ITERATIONS).encode(),
                );
                let outcome = script.run(&mut cfg);
                assert!(outcome.commands <= text.len());
                HostConfig::decode(&cfg.encode()).expect("scripts keep the configuration valid");
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
