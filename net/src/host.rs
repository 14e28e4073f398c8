//! The host's state, owned by the appliance: the configuration in force, the store it is saved in,
//! the root account, the HTTPS identity, and the VMs. The management API, the DCUI, first boot (and
//! later SSH) borrow it for each request or key press; every change goes through
//! [`HostState::begin_commit`]: it is saved and flushed before anything changes, one device command
//! per [`HostState::poll_store`], so the management loop keeps serving the DCUI and the API while
//! a slow boot medium writes. One change is saved at a time; the API and the DCUI hold a change
//! made while another is being saved until that one is done (so it builds on it).

use crate::api::NicInfo;
use crate::auth::{AuthError, RootAccount, StoredHash};
use crate::firstboot;
use crate::tls::server::ServerIdentity;
use crate::vms::{NoVms, VmService};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ember_storage::disks::HostDisks;
use ember_storage::hostconfig::HostConfig;
use ember_storage::kickstart;
use ember_storage::persist::HostStore;
use serde_json::{json, Value};

/// Where configuration changes go.
pub enum Persistence {
    /// The config store on the boot media.
    Store(HostStore),
    /// Nowhere: changes last until reboot. The text says why.
    None(String),
}

/// Why a change was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitError {
    /// The configuration store could not be written; nothing changed.
    Store(String),
    /// The root password hash cannot be used.
    Hash(AuthError),
    /// The HTTPS key or certificate cannot be used.
    Tls(String),
    /// Another change is being saved (callers wait for [`HostState::saving`] to end).
    Busy,
}

impl core::fmt::Display for CommitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CommitError::Store(e) => {
                write!(f, "the configuration could not be saved, nothing was changed: {e}")
            }
            CommitError::Hash(e) => write!(f, "root_password_hash: {e}"),
            CommitError::Tls(e) => write!(f, "{e}"),
            CommitError::Busy => write!(f, "another change is being saved; nothing was changed, try again"),
        }
    }
}

/// A host power action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPower {
    Shutdown,
    Reboot,
}

/// The host's state (see the module docs).
pub struct HostState {
    /// The configuration in force (saved, when there is a store). Its `network` is what the
    /// management interface runs with, except while a change waits to be applied.
    pub config: HostConfig,
    pub store: Persistence,
    pub root: RootAccount,
    /// The hypervisor's VMs.
    pub vms: Box<dyn VmService>,
    /// The host's disks other than the boot media, and the datastores on them.
    pub disks: HostDisks,
    /// The HTTPS key and certificate in use ([`HostState::start_https`]); `None` only when none
    /// could be made (no random source), and then the HTTPS port refuses connections.
    pub https: Option<ServerIdentity>,
    /// Number of changes committed since boot.
    pub generation: u64,
    /// Salt source for password changes (random per boot, advanced per use).
    salt_state: u64,
    /// The wall clock at boot (seconds since 1970), when the firmware gave one.
    pub boot_unix: Option<i64>,
    /// The management loop's clock, for changes that need the time.
    pub now_ms: u64,
    /// A host shutdown or restart asked for through the API: the management loop carries it out
    /// (VMs shut down first) once the answer has gone out.
    pub power_request: Option<HostPower>,
    /// The API added, changed or removed a VM (the VM consoles' ports are opened again).
    pub vms_changed: bool,
    /// What happened that the log should say (taken by the management network).
    pub notes: Vec<String>,
    /// The change being saved, and the number the next one gets.
    saving: Option<Saving>,
    next_ticket: Ticket,
    /// How the last changes ended, newest last (at most [`OUTCOMES_KEPT`]).
    outcomes: VecDeque<(Ticket, Result<(), CommitError>)>,
}

/// Names a change handed to [`HostState::begin_commit`], to ask for its outcome.
pub type Ticket = u64;

/// Outcomes kept for [`HostState::outcome`]: more than the changes that can wait at once (one per
/// API connection and the DCUI's) need not be, as each is asked for as soon as it is known.
const OUTCOMES_KEPT: usize = 64;

/// A change whose configuration is being written to the store.
struct Saving {
    ticket: Ticket,
    new: HostConfig,
    hash: Option<StoredHash>,
    identity: Option<ServerIdentity>,
    /// What the log says once it is done (`None`: the caller reports it).
    log: Option<String>,
}

impl HostState {
    /// The state for `config`: the root account verifies its password hash. `cache_key` and
    /// `salt_seed` must be random per boot.
    pub fn new(
        config: HostConfig,
        store: Persistence,
        cache_key: [u8; 32],
        salt_seed: u64,
    ) -> Result<Self, AuthError> {
        let root = RootAccount::new(StoredHash::decode(&config.root_password_hash)?, cache_key);
        Ok(HostState {
            config,
            store,
            root,
            vms: Box::new(NoVms),
            disks: HostDisks::none(),
            https: None,
            generation: 0,
            salt_state: salt_seed,
            boot_unix: None,
            now_ms: 0,
            power_request: None,
            vms_changed: false,
            notes: Vec::new(),
            saving: None,
            next_ticket: 1,
            outcomes: VecDeque::new(),
        })
    }
}

impl HostState {
    /// The wall clock now (seconds since 1970), when the host knows it.
    pub fn unix_now(&self) -> Option<u64> {
        self.boot_unix.map(|b| b.saturating_add((self.now_ms / 1000) as i64).max(0) as u64)
    }

    /// Loads the stored HTTPS key and certificate, or makes a self-signed pair for a host without
    /// a usable one. The new pair is stored at once when the store holds a configuration; on a
    /// host whose store is still empty (a first boot that stored nothing, for example after a bad
    /// kickstart, so the next boot is a first boot again) it is kept in memory and stored with the
    /// first change.
    pub fn start_https(&mut self) {
        if let Some(stored) = &self.config.tls {
            match ServerIdentity::load(stored) {
                Ok(id) => {
                    self.https = Some(id);
                    self.note_certificate("in use");
                    self.renew_https_if_due();
                    return;
                }
                Err(e) => self.notes.push(format!(
                    "ERROR: the stored HTTPS certificate cannot be used ({e}); a new self-signed one is made"
                )),
            }
        }
        if matches!(&self.store, Persistence::Store(s) if s.in_use().is_none()) {
            match crate::tls::server::self_signed(&self.config.network.hostname, self.unix_now()) {
                Ok(id) => {
                    self.config.tls = Some(id.stored.clone());
                    self.https = Some(id);
                    self.note_certificate("made (stored with the first configuration)");
                }
                Err(e) => self.notes.push(format!("ERROR: no HTTPS certificate could be made: {e}")),
            }
            return;
        }
        let mut host = self.config.clone();
        host.tls = None;
        if let Err(e) = self.commit(host) {
            // Served all the same; the next boot makes another one.
            self.notes.push(format!(
                "ERROR: the new HTTPS certificate is not stored ({e}); it is used until the host restarts"
            ));
            if let Ok(id) = crate::tls::server::self_signed(&self.config.network.hostname, self.unix_now()) {
                self.config.tls = Some(id.stored.clone());
                self.https = Some(id);
                self.note_certificate("made for this boot only");
            }
        }
    }

    /// Replaces a self-signed certificate that ends within [`RENEW_BEFORE_DAYS`] (when the host
    /// knows the time); CA-signed certificates are the administrator's to replace.
    ///
    /// [`RENEW_BEFORE_DAYS`]: crate::tls::server::RENEW_BEFORE_DAYS
    pub fn renew_https_if_due(&mut self) {
        let (Some(now), Some(h)) = (self.unix_now(), self.https.as_ref()) else { return };
        let due = h.info.not_after_unix.saturating_sub(crate::tls::server::RENEW_BEFORE_DAYS * 86_400);
        if !h.info.self_signed || now < due {
            return;
        }
        self.notes.push(format!(
            "the self-signed HTTPS certificate ends on {}: a new one is made",
            h.info.not_after
        ));
        let mut host = self.config.clone();
        host.tls = None;
        let what = String::from("the self-signed HTTPS certificate renewed");
        if let Err(e) = self.begin_commit(host, Some(what)) {
            self.notes.push(format!("ERROR: the HTTPS certificate could not be renewed: {e}"));
        }
    }

    fn note_certificate(&mut self, what: &str) {
        if let Some(i) = self.https.as_ref().map(|h| &h.info) {
            let kind = if i.self_signed { "self-signed" } else { "issued by " };
            let issuer = if i.self_signed { "" } else { i.issuer.as_str() };
            self.notes.push(format!(
                "HTTPS certificate {what}: {} ({kind}{issuer}), SHA-256 fingerprint {}",
                i.subject,
                i.fingerprint()
            ));
        }
    }

    /// Makes `new` the configuration in force: saved and flushed first when there is a store, so on a
    /// failed write nothing changes. Waits for the save (use [`HostState::begin_commit`] where the
    /// management loop must keep serving meanwhile). The management network is not restarted here:
    /// it follows the configuration's `network` (`ManagementNetwork::poll`).
    pub fn commit(&mut self, new: HostConfig) -> Result<(), CommitError> {
        // A change being saved ends first (this one builds on it).
        while self.saving() {
            self.poll_store();
        }
        let ticket = self.begin_commit(new, None)?;
        while self.saving() {
            self.poll_store();
        }
        self.outcome(ticket).unwrap_or(Err(CommitError::Busy))
    }

    /// Starts making `new` the configuration in force; it takes effect once it is saved and
    /// flushed ([`HostState::poll_store`] carries the save on, [`HostState::outcome`] tells how it
    /// ended). Checks that need no device are made at once: on `Err` nothing was started. `log`:
    /// what the log says when the change is done (or, prefixed with ERROR, that it failed).
    ///
    /// A configuration without an HTTPS key (a new host, Reset System Configuration) gets a new
    /// self-signed one, stored with it.
    pub fn begin_commit(&mut self, mut new: HostConfig, log: Option<String>) -> Result<Ticket, CommitError> {
        if self.saving.is_some() {
            return Err(CommitError::Busy);
        }
        let hash = if new.root_password_hash == self.config.root_password_hash {
            None
        } else {
            Some(StoredHash::decode(&new.root_password_hash).map_err(CommitError::Hash)?)
        };
        let mut identity = None;
        // A self-signed certificate names the host: a new host name gets a new one.
        let renamed = new.network.hostname != self.config.network.hostname
            && new.tls.as_ref().is_some_and(|t| t.self_signed)
            && new.tls == self.config.tls;
        if new.tls.is_none() || renamed {
            let id = crate::tls::server::self_signed(&new.network.hostname, self.unix_now())
                .map_err(|e| CommitError::Tls(format!("no HTTPS certificate could be made: {e}")))?;
            new.tls = Some(id.stored.clone());
            identity = Some(id);
        } else if new.tls != self.config.tls {
            let stored = new.tls.as_ref().ok_or(CommitError::Tls(String::new()))?;
            identity = Some(ServerIdentity::load(stored).map_err(CommitError::Tls)?);
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let change = Saving { ticket, new, hash, identity, log };
        let written = match &mut self.store {
            Persistence::Store(store) => {
                store.start_save(&change.new).map_err(|e| CommitError::Store(e.to_string()))?.is_some()
            }
            Persistence::None(_) => true,
        };
        if written {
            self.finish(change, Ok(()));
        } else {
            self.saving = Some(change);
        }
        Ok(ticket)
    }

    /// Erases the configuration store (Reset System Configuration: the next boot is a first boot).
    /// A change being saved ends unsaved; nothing of the configuration in force changes.
    pub fn erase_store(&mut self) -> Result<(), String> {
        if let Some(change) = self.saving.take() {
            self.finish(change, Err(CommitError::Store(String::from("the configuration store was erased"))));
        }
        match &mut self.store {
            Persistence::Store(s) => s.erase().map_err(|e| e.to_string()),
            Persistence::None(_) => Ok(()),
        }
    }

    /// Whether a change is being saved.
    pub fn saving(&self) -> bool {
        self.saving.is_some()
    }

    /// Carries the save in progress on by one device command; when it ends, the change takes
    /// effect (or, when it failed, nothing changes). Returns whether there was anything to do.
    pub fn poll_store(&mut self) -> bool {
        if self.saving.is_none() {
            return false;
        }
        let result = match &mut self.store {
            Persistence::Store(store) => match store.step_save() {
                Some(result) => result.map(|_| ()).map_err(|e| CommitError::Store(e.to_string())),
                None if store.saving() => return true,
                // The store gave the write up (it was erased meanwhile): the change is not saved.
                None => Err(CommitError::Store(String::from("the save was given up"))),
            },
            Persistence::None(_) => Err(CommitError::Store(String::from("there is no configuration store"))),
        };
        if let Some(change) = self.saving.take() {
            self.finish(change, result);
        }
        true
    }

    /// How change `ticket` ended; `None` while it is being saved.
    pub fn outcome(&self, ticket: Ticket) -> Option<Result<(), CommitError>> {
        if self.saving.as_ref().is_some_and(|s| s.ticket == ticket) {
            return None;
        }
        Some(self.outcomes.iter().find(|(t, _)| *t == ticket).map_or(
            Err(CommitError::Store(String::from("the outcome of this change is no longer known"))),
            |(_, r)| r.clone(),
        ))
    }

    fn finish(&mut self, change: Saving, result: Result<(), CommitError>) {
        match (&result, &change.log) {
            (Ok(()), Some(what)) => self.notes.push(what.clone()),
            (Err(e), Some(what)) => self.notes.push(format!("ERROR: {what}: {e}")),
            (_, None) => {}
        }
        if result.is_ok() {
            if let Some(h) = change.hash {
                self.root.set_hash(h);
            }
            if let Some(id) = change.identity {
                self.https = Some(id);
                self.note_certificate("made");
            }
            self.config = change.new;
            self.generation += 1;
        }
        if self.outcomes.len() == OUTCOMES_KEPT {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back((change.ticket, result));
    }

    /// Applies a kickstart fetched at first boot (`name` is where it came from; `nics`: the host's
    /// NICs): whole or not at all, stored like any change (waiting for the store: this happens
    /// once in a host's life). Returns the notes about what was not carried out. The management
    /// network follows the new settings by itself (`ManagementNetwork::poll`).
    pub fn apply_kickstart(
        &mut self,
        name: &str,
        text: &str,
        nics: &[NicInfo],
    ) -> Result<Vec<String>, String> {
        let mut no_includes = |f: &str| -> Result<String, String> {
            Err(format!(
                "cannot read {f}: includes are not supported in a kickstart fetched over the network"
            ))
        };
        let ks = kickstart::parse(name, text, &mut no_includes).map_err(|e| e.to_string())?;
        let salt = self.next_salt();
        let applied = firstboot::config_from_kickstart(&ks, &self.config, nics, &mut |pw| {
            firstboot::hash_password(pw, salt)
        })
        .map_err(|e| e.to_string())?;
        self.commit(applied.config).map_err(|e| e.to_string())?;
        let mut notes = applied.notes;
        if !self.config.firstboot.is_empty() {
            // Stored with the configuration above, so they run once even across a power cut.
            let mut host = self.config.clone();
            notes.extend(ember_storage::script::run_firstboot(&mut host));
            match self.commit(host) {
                Ok(()) => notes.push(String::from("%firstboot: the result is stored")),
                Err(e) => notes.push(format!("%firstboot: the result could not be stored ({e}); the scripts run again at the next boot")),
            }
        }
        Ok(notes)
    }

    /// The `store` object: whether changes survive a reboot, and where they go.
    pub fn store_json(&self) -> Value {
        match &self.store {
            Persistence::Store(s) => {
                let (slot, sequence) = s.in_use().map_or((Value::Null, Value::Null), |(slot, seq)| {
                    (Value::String(slot.to_string()), Value::from(seq))
                });
                json!({
                    "persistent": true,
                    "disk": s.disk.name,
                    "driver": s.disk.driver,
                    "slot": slot,
                    "sequence": sequence,
                })
            }
            Persistence::None(why) => json!({ "persistent": false, "reason": why }),
        }
    }

    /// The `GET /api/v1/config` document: the stored form, with the password hash's scheme only.
    pub fn config_json(&self) -> Value {
        let mut v = self.config.settings_json();
        if let Value::Object(m) = &mut v {
            m.remove("root_password_hash");
            m.insert(String::from("root_password"), json!({ "scheme": self.root.hash().scheme() }));
            m.insert(String::from("store"), self.store_json());
        }
        v
    }

    /// `GET /api/v1/host/certificate`: the HTTPS certificate (never the key).
    pub fn certificate_json(&self) -> Value {
        match &self.https {
            Some(h) => {
                let i = &h.info;
                json!({
                    "sha256": i.fingerprint(),
                    "subject": i.subject,
                    "issuer": i.issuer,
                    "not_before": i.not_before,
                    "not_after": i.not_after,
                    "self_signed": i.self_signed,
                    "chain_length": i.chain_len,
                    "certificate": h.stored.chain_pem,
                })
            }
            None => Value::Null,
        }
    }

    pub(crate) fn next_salt(&mut self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for chunk in out.chunks_mut(8) {
            // splitmix64
            self.salt_state = self.salt_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.salt_state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use ember_storage::persist::HostStore;

    /// A store on an in-memory Ember medium; `fail_writes` makes the medium refuse every write.
    pub(crate) fn memory_store(fail_writes: bool) -> Persistence {
        use ember_storage::block::MemDisk;
        use ember_storage::persist::{find_boot_media, Disk};
        let blocks = ember_storage::layout::MIN_MEDIA_SIZE / 512 + 64;
        let mut mem = MemDisk::new(512, blocks);
        let layout = ember_storage::layout::plan(512, blocks).unwrap();
        let guid = |i: usize| ember_storage::gpt::Guid::from_bytes([i as u8 + 1; 16]);
        ember_storage::gpt::write_gpt(&mut mem, guid(9), &ember_storage::layout::gpt_entries(&layout, guid))
            .unwrap();
        mem.write_protected = fail_writes;
        let mut disks = [Disk::new("vda".into(), "virtio-blk", Box::new(mem))];
        let (_, layout) = find_boot_media(&mut disks, Some(guid(0))).unwrap();
        let [d] = disks;
        Persistence::Store(HostStore::open(d, &layout).unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{PasswordHash, MIN_ITERATIONS};

    fn host(store: Persistence) -> HostState {
        crate::tls::crypto::seed([8; 32]);
        let hash = PasswordHash::new("rootpass", [3; 16], MIN_ITERATIONS).encode();
        let mut h = HostState::new(HostConfig::defaults(hash), store, [4; 32], 1).unwrap();
        h.start_https();
        h
    }

    #[test]
    fn a_change_takes_effect_once_saved_one_step_at_a_time_and_a_second_one_waits() {
        let mut h = host(testing::memory_store(false));
        let (before, generation) = (h.config.clone(), h.generation);
        let mut new = h.config.clone();
        new.keyboard = "German".into();
        let t = h.begin_commit(new.clone(), Some("keyboard layout German".into())).unwrap();
        assert!(h.saving());
        assert_eq!(h.outcome(t), None);
        // Another change is refused until this one has ended.
        assert_eq!(h.begin_commit(before.clone(), None), Err(CommitError::Busy));
        let mut steps = 0;
        while h.saving() {
            assert_eq!((&h.config, h.generation), (&before, generation), "not in force before it is saved");
            assert!(h.poll_store());
            steps += 1;
        }
        assert!(steps >= 3, "payload, header and flush are steps of their own ({steps})");
        assert_eq!(h.outcome(t), Some(Ok(())));
        assert_eq!(h.config.keyboard, "German");
        assert_eq!(h.generation, generation + 1);
        assert_eq!(h.notes.last().map(String::as_str), Some("keyboard layout German"));
        assert!(!h.poll_store(), "nothing left to do");
        // The same configuration again: nothing to write, in force at once.
        let t = h.begin_commit(new, None).unwrap();
        assert!(!h.saving());
        assert_eq!(h.outcome(t), Some(Ok(())));
        // Checks that need no device fail at once and start nothing.
        let mut bad = h.config.clone();
        bad.root_password_hash = "$pbkdf2-sha256$x".into();
        assert!(matches!(h.begin_commit(bad, None), Err(CommitError::Hash(_))));
        assert!(!h.saving());
        // An unknown ticket is not taken for a success.
        assert!(matches!(h.outcome(9999), Some(Err(_))));
    }

    #[test]
    fn erasing_the_store_during_a_save_ends_the_change_unsaved() {
        let mut h = host(testing::memory_store(false));
        let before = h.config.clone();
        let mut new = h.config.clone();
        new.ssh_enabled = true;
        let t = h.begin_commit(new.clone(), None).unwrap();
        assert!(h.poll_store() && h.saving());
        h.erase_store().unwrap();
        assert!(!h.saving() && !h.poll_store());
        assert!(matches!(h.outcome(t), Some(Err(CommitError::Store(_)))));
        assert_eq!(h.config, before);
        // The store works on: the next change is saved.
        h.commit(new).unwrap();
        assert!(h.config.ssh_enabled);
    }

    #[test]
    fn a_failed_save_changes_nothing_and_says_why() {
        let mut h = host(testing::memory_store(true));
        let before = h.config.clone();
        let mut new = h.config.clone();
        new.ssh_enabled = true;
        let t = h.begin_commit(new, Some("SSH enabled".into())).unwrap();
        while h.saving() {
            h.poll_store();
        }
        let Some(Err(e)) = h.outcome(t) else { panic!("the save cannot succeed") };
        assert!(e.to_string().contains("nothing was changed"), "{e}");
        assert_eq!(h.config, before);
        assert!(h.notes.last().unwrap().starts_with("ERROR: SSH enabled: "), "{:?}", h.notes);
        // The synchronous form says the same.
        let mut new = h.config.clone();
        new.ssh_enabled = true;
        assert!(matches!(h.commit(new), Err(CommitError::Store(_))));
    }
}
