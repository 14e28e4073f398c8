//! Root password storage and HTTP Basic authentication (RFC 7617).
//!
//! The password is kept only as a salted slow hash: PBKDF2-HMAC-SHA256 (RFC 8018 5.2) with a per-hash
//! random salt and a stored iteration count, written as `$pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>`.
//! Because the slow hash is deliberately expensive, a successful `Authorization` header is remembered as
//! an HMAC under a per-boot key (never the password itself), so a client that keeps sending the same
//! credentials pays the slow hash once. Slow verifications are rationed per second so a flood of wrong
//! passwords cannot monopolise the management CPU.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use core::fmt;
use core::net::IpAddr;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Iterations for new hashes. Chosen so one verification costs a fraction of a second even under
/// emulation (TCG), where the management API is tested.
pub const DEFAULT_ITERATIONS: u32 = 100_000;
/// Hashes with fewer iterations than this are refused when loaded.
pub const MIN_ITERATIONS: u32 = 1_000;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
/// The built-in initial root password (documented in the README; to be changed).
pub const INITIAL_PASSWORD: &str = "ember-initial";
/// Longest password accepted.
pub const MAX_PASSWORD_LEN: usize = 128;
/// Slow verifications allowed per second from one source address; more get "too many requests".
pub const SLOW_CHECKS_PER_SECOND: u32 = 2;
/// Slow verifications allowed per second from all sources together (bounds the management CPU's
/// time spent hashing; one source can use only [`SLOW_CHECKS_PER_SECOND`] of it).
pub const SLOW_CHECKS_PER_SECOND_ALL: u32 = 8;
/// Source addresses whose budget is tracked at once (the least recently seen is forgotten).
const BUDGET_SOURCES: usize = 64;
/// Hashes with more iterations than this are refused (every login pays for them).
pub const MAX_ITERATIONS: u32 = ember_storage::hostconfig::MAX_PBKDF2_ITERATIONS;

/// A stored password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: u32,
    salt: [u8; SALT_LEN],
    hash: [u8; HASH_LEN],
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordHash(pbkdf2-sha256, {} iterations)", self.iterations)
    }
}

/// Why a stored hash or a new password was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The stored string is not `$pbkdf2-sha256$iterations$salt$hash`.
    BadFormat(&'static str),
    /// The new password breaks a rule.
    WeakPassword(&'static str),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::BadFormat(w) => write!(f, "password hash: {w}"),
            AuthError::WeakPassword(w) => write!(f, "password: {w}"),
        }
    }
}

fn derive(password: &[u8], salt: &[u8], iterations: u32) -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

/// Constant-time equality for equal-length secrets.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the rules for a new root password: 7 to 128 printable ASCII characters (ESXi's minimum is 7).
pub fn check_password_rules(password: &str) -> Result<(), AuthError> {
    if password.len() < 7 {
        return Err(AuthError::WeakPassword("must be at least 7 characters"));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(AuthError::WeakPassword("must be at most 128 characters"));
    }
    if !password.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(AuthError::WeakPassword("must be printable ASCII"));
    }
    Ok(())
}

impl PasswordHash {
    /// Hashes `password` with `salt` (16 random bytes from the caller) and `iterations`.
    pub fn new(password: &str, salt: [u8; SALT_LEN], iterations: u32) -> Self {
        PasswordHash { iterations, salt, hash: derive(password.as_bytes(), &salt, iterations) }
    }

    /// The slow check.
    pub fn verify(&self, password: &str) -> bool {
        ct_eq(&derive(password.as_bytes(), &self.salt, self.iterations), &self.hash)
    }

    /// The stored form.
    pub fn encode(&self) -> String {
        format!("$pbkdf2-sha256${}${}${}", self.iterations, B64.encode(self.salt), B64.encode(self.hash))
    }

    /// Parses the stored form.
    pub fn decode(s: &str) -> Result<Self, AuthError> {
        let mut parts = s.split('$');
        if parts.next() != Some("") || parts.next() != Some("pbkdf2-sha256") {
            return Err(AuthError::BadFormat("expected the $pbkdf2-sha256$ scheme"));
        }
        let iterations: u32 = parts
            .next()
            .and_then(|i| i.parse().ok())
            .ok_or(AuthError::BadFormat("iteration count is not a number"))?;
        if iterations < MIN_ITERATIONS {
            return Err(AuthError::BadFormat("iteration count below 1000"));
        }
        if iterations > MAX_ITERATIONS {
            return Err(AuthError::BadFormat("iteration count above 1000000"));
        }
        let salt: [u8; SALT_LEN] = parts
            .next()
            .and_then(|p| B64.decode(p).ok())
            .and_then(|v| v.try_into().ok())
            .ok_or(AuthError::BadFormat("salt is not 16 bytes of base64"))?;
        let hash: [u8; HASH_LEN] = parts
            .next()
            .and_then(|p| B64.decode(p).ok())
            .and_then(|v| v.try_into().ok())
            .ok_or(AuthError::BadFormat("hash is not 32 bytes of base64"))?;
        if parts.next().is_some() {
            return Err(AuthError::BadFormat("trailing fields"));
        }
        Ok(PasswordHash { iterations, salt, hash })
    }
}

/// A root password hash in one of the schemes Ember verifies: its own PBKDF2 form, or SHA-512 crypt
/// (`$6$[rounds=N$]salt$hash`, what `openssl passwd -6` and `mkpasswd` write, accepted from kickstart
/// `rootpw --iscrypted`; verified with RustCrypto's `sha-crypt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredHash {
    Pbkdf2(PasswordHash),
    Sha512Crypt(String),
}

impl From<PasswordHash> for StoredHash {
    fn from(h: PasswordHash) -> Self {
        StoredHash::Pbkdf2(h)
    }
}

impl StoredHash {
    /// Parses a stored hash; the shape of a `$6$` hash is checked by the configuration model.
    pub fn decode(s: &str) -> Result<Self, AuthError> {
        if s.starts_with("$6$") {
            ember_storage::hostconfig::validate_password_hash("root_password_hash", s)
                .map_err(|_| AuthError::BadFormat("not a well-formed SHA-512 crypt hash"))?;
            return Ok(StoredHash::Sha512Crypt(s.into()));
        }
        PasswordHash::decode(s).map(StoredHash::Pbkdf2)
    }

    /// The stored form.
    pub fn encode(&self) -> String {
        match self {
            StoredHash::Pbkdf2(h) => h.encode(),
            StoredHash::Sha512Crypt(s) => s.clone(),
        }
    }

    /// The scheme's name, as the API shows it (never the hash).
    pub fn scheme(&self) -> &'static str {
        match self {
            StoredHash::Pbkdf2(_) => "pbkdf2-sha256",
            StoredHash::Sha512Crypt(_) => "sha512-crypt",
        }
    }

    /// The slow check.
    pub fn verify(&self, password: &str) -> bool {
        use sha_crypt::PasswordVerifier;
        match self {
            StoredHash::Pbkdf2(h) => h.verify(password),
            StoredHash::Sha512Crypt(s) => {
                sha_crypt::ShaCrypt::default().verify_password(password.as_bytes(), s.as_str()).is_ok()
            }
        }
    }
}

/// Splits an `Authorization: Basic <base64(user:password)>` value. `None` when it is not Basic or
/// not decodable.
pub fn parse_basic(value: &[u8]) -> Option<(String, String)> {
    let value = core::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = B64.decode(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.into(), pass.into()))
}

/// The outcome of checking a request's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    Allowed,
    /// Missing or wrong credentials (401).
    Denied,
    /// The slow-check budget for this second is spent (429).
    Busy,
}

/// The root account: its hash, the remembered good header, and the slow-check budgets.
pub struct RootAccount {
    hash: StoredHash,
    /// Per-boot key for remembering verified headers.
    cache_key: [u8; 32],
    remembered: Vec<[u8; 32]>,
    /// Slow checks in the current second: by source address (most recently used last), and in
    /// all.
    budgets: Vec<(Option<IpAddr>, u64, u32)>,
    all_second: u64,
    all_used: u32,
}

const REMEMBERED_MAX: usize = 8;

impl RootAccount {
    /// `cache_key` must be random per boot.
    pub fn new(hash: impl Into<StoredHash>, cache_key: [u8; 32]) -> Self {
        RootAccount {
            hash: hash.into(),
            cache_key,
            remembered: Vec::new(),
            budgets: Vec::new(),
            all_second: 0,
            all_used: 0,
        }
    }

    /// Forgets every remembered header: the next request of each client is checked slowly again.
    pub fn forget(&mut self) {
        self.remembered.clear();
    }

    fn tag(&self, header: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.cache_key).expect("any key length");
        mac.update(header);
        mac.finalize().into_bytes().into()
    }

    /// Takes a slow check from `source`'s budget and the overall one for this second, if both
    /// have one left.
    fn spend(&mut self, source: Option<IpAddr>, now_ms: u64) -> bool {
        let second = now_ms / 1000;
        if second != self.all_second {
            self.all_second = second;
            self.all_used = 0;
        }
        let i = match self.budgets.iter().position(|(s, ..)| *s == source) {
            Some(i) => i,
            None => {
                if self.budgets.len() >= BUDGET_SOURCES {
                    self.budgets.remove(0);
                }
                self.budgets.push((source, second, 0));
                self.budgets.len() - 1
            }
        };
        let mut entry = self.budgets.remove(i);
        if entry.1 != second {
            entry = (source, second, 0);
        }
        let ok = entry.2 < SLOW_CHECKS_PER_SECOND && self.all_used < SLOW_CHECKS_PER_SECOND_ALL;
        if ok {
            entry.2 += 1;
            self.all_used += 1;
        }
        self.budgets.push(entry);
        ok
    }

    /// Checks an `Authorization` header value from `source` (the client's address) at time
    /// `now_ms`.
    pub fn check(&mut self, header: Option<&[u8]>, source: Option<IpAddr>, now_ms: u64) -> AuthResult {
        let Some(header) = header else { return AuthResult::Denied };
        let tag = self.tag(header);
        if self.remembered.iter().any(|t| ct_eq(t, &tag)) {
            return AuthResult::Allowed;
        }
        let Some((user, pass)) = parse_basic(header) else { return AuthResult::Denied };
        if user != "root" || pass.len() > MAX_PASSWORD_LEN {
            return AuthResult::Denied;
        }
        if !self.spend(source, now_ms) {
            return AuthResult::Busy;
        }
        if self.hash.verify(&pass) {
            if self.remembered.len() >= REMEMBERED_MAX {
                self.remembered.remove(0);
            }
            self.remembered.push(tag);
            AuthResult::Allowed
        } else {
            AuthResult::Denied
        }
    }

    /// Checks a password typed by a client at `source` (a console login), within the same budget
    /// of slow checks as [`Self::check`].
    pub fn check_password(&mut self, password: &str, source: Option<IpAddr>, now_ms: u64) -> AuthResult {
        if password.len() > MAX_PASSWORD_LEN {
            return AuthResult::Denied;
        }
        if !self.spend(source, now_ms) {
            return AuthResult::Busy;
        }
        if self.hash.verify(password) {
            AuthResult::Allowed
        } else {
            AuthResult::Denied
        }
    }

    /// Replaces the hash; forgets every remembered header.
    pub fn set_hash(&mut self, hash: StoredHash) {
        self.hash = hash;
        self.remembered.clear();
    }

    /// The stored hash (for the configuration store).
    pub fn hash(&self) -> &StoredHash {
        &self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, pass: &str) -> Vec<u8> {
        format!("Basic {}", B64.encode(format!("{user}:{pass}"))).into_bytes()
    }

    #[test]
    fn hash_round_trip_and_verify() {
        let h = PasswordHash::new("correct horse", [7; 16], MIN_ITERATIONS);
        assert!(h.verify("correct horse"));
        assert!(!h.verify("correct horsE"));
        let s = h.encode();
        assert!(s.starts_with("$pbkdf2-sha256$1000$"));
        assert!(!s.contains("correct"));
        assert_eq!(PasswordHash::decode(&s).unwrap(), h);
        // A different salt gives a different hash for the same password.
        assert_ne!(PasswordHash::new("correct horse", [8; 16], MIN_ITERATIONS).encode(), s);
    }

    #[test]
    fn rfc_6070_style_vector() {
        // PBKDF2-HMAC-SHA256("password", "salt", 1) first bytes, from RFC 7914 11 / common test vectors.
        let out = derive(b"password", b"salt", 1);
        assert_eq!(&out[..4], &[0x12, 0x0f, 0xb6, 0xcf]);
    }

    #[test]
    fn bad_stored_hashes_are_named() {
        for (s, what) in [
            ("", "scheme"),
            ("$md5$1000$a$b", "scheme"),
            ("$pbkdf2-sha256$x$a$b", "number"),
            ("$pbkdf2-sha256$10$AAAAAAAAAAAAAAAAAAAAAA==$AAAA", "below"),
            ("$pbkdf2-sha256$1000$AAAA$AAAA", "salt"),
            ("$pbkdf2-sha256$1000$AAAAAAAAAAAAAAAAAAAAAA==$AAAA", "hash"),
        ] {
            let e = PasswordHash::decode(s).unwrap_err();
            assert!(format!("{e}").contains(what), "{s}: {e}");
        }
    }

    #[test]
    fn basic_header_parsing() {
        assert_eq!(parse_basic(&header("root", "a:b")), Some(("root".into(), "a:b".into())));
        assert_eq!(parse_basic(b"bearer abc"), None);
        assert_eq!(parse_basic(b"Basic !!!"), None);
        assert_eq!(parse_basic(b"Basic"), None);
        assert_eq!(parse_basic(b"basic cm9vdA=="), None); // "root" without a colon
    }

    #[test]
    fn sha512_crypt_hashes_verify() {
        // `openssl passwd -6 -salt saltsalt "correct horse"`
        let h = "$6$saltsalt$hRM5XZ86KXEw9UOmjigeVqFgULtFB2sgpC9lXQDfMib3Zgw7mEiUvBJI2EplzfAqxL5Vvwp2scFtv/uamSo5z0";
        let stored = StoredHash::decode(h).unwrap();
        assert_eq!(stored.scheme(), "sha512-crypt");
        assert!(stored.verify("correct horse"));
        assert!(!stored.verify("correct horse!"));
        assert_eq!(stored.encode(), h);
        assert!(StoredHash::decode("$6$saltsalt$short").is_err());
        let p = StoredHash::decode(&PasswordHash::new("x", [1; 16], MIN_ITERATIONS).encode()).unwrap();
        assert_eq!(p.scheme(), "pbkdf2-sha256");
    }

    #[test]
    fn account_checks_remembers_and_rations() {
        const A: Option<IpAddr> = Some(IpAddr::V4(core::net::Ipv4Addr::new(10, 0, 0, 1)));
        let mut acct = RootAccount::new(PasswordHash::new("secret-1", [1; 16], MIN_ITERATIONS), [9; 32]);
        assert_eq!(acct.check(None, A, 0), AuthResult::Denied);
        assert_eq!(acct.check(Some(&header("admin", "secret-1")), A, 0), AuthResult::Denied);
        assert_eq!(acct.check(Some(&header("root", "secret-1")), A, 0), AuthResult::Allowed);
        // Wrong passwords use up the slow-check budget for this second...
        for _ in 0..SLOW_CHECKS_PER_SECOND - 1 {
            assert_eq!(acct.check(Some(&header("root", "wrong")), A, 10), AuthResult::Denied);
        }
        assert_eq!(acct.check(Some(&header("root", "wrong")), A, 20), AuthResult::Busy);
        // ...but a remembered good header still passes, and the budget refills next second.
        assert_eq!(acct.check(Some(&header("root", "secret-1")), A, 30), AuthResult::Allowed);
        assert_eq!(acct.check(Some(&header("root", "wrong")), A, 1000), AuthResult::Denied);
        // Changing the password forgets the remembered header.
        acct.set_hash(PasswordHash::new("new-password", [2; 16], MIN_ITERATIONS).into());
        assert_eq!(acct.check(Some(&header("root", "secret-1")), A, 2000), AuthResult::Denied);
        assert_eq!(acct.check(Some(&header("root", "new-password")), A, 2000), AuthResult::Allowed);
    }

    /// One source guessing passwords does not lock another out; all sources together are held
    /// to the overall budget; a hash asking for too many iterations is refused.
    #[test]
    fn budgets_are_per_source() {
        let ip = |n: u8| Some(IpAddr::V4(core::net::Ipv4Addr::new(10, 0, 0, n)));
        let mut acct = RootAccount::new(PasswordHash::new("secret-1", [1; 16], MIN_ITERATIONS), [9; 32]);
        for _ in 0..SLOW_CHECKS_PER_SECOND {
            assert_eq!(acct.check(Some(&header("root", "guess")), ip(66), 5), AuthResult::Denied);
        }
        assert_eq!(acct.check(Some(&header("root", "guess")), ip(66), 6), AuthResult::Busy);
        assert_eq!(acct.check(Some(&header("root", "secret-1")), ip(1), 7), AuthResult::Allowed);
        // Many sources: the overall budget holds (8 slow checks a second in all).
        let mut busy = 0;
        for n in 100..120 {
            if acct.check(Some(&header("root", "guess")), ip(n), 1500) == AuthResult::Busy {
                busy += 1;
            }
        }
        assert_eq!(busy, 20 - SLOW_CHECKS_PER_SECOND_ALL as usize);
        // Hundreds of sources are tracked in bounded memory.
        for n in 0..=255 {
            acct.check(Some(&header("root", "guess")), ip(n), 3000 + u64::from(n) * 1000);
        }
        assert!(acct.budgets.len() <= BUDGET_SOURCES);
        let huge =
            "$pbkdf2-sha256$4294967295$AAECAwQFBgcICQoLDA0ODw==$3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhs=";
        assert!(PasswordHash::decode(huge).is_err());
        assert!(ember_storage::hostconfig::validate_password_hash("root_password_hash", huge).is_err());
    }
}
