//! The cryptography behind Ember's TLS client: a `rustls` [`CryptoProvider`] built from RustCrypto
//! crates (pure Rust, `no_std`, soft-float safe on the UEFI target).
//!
//! rustls ships providers only on top of `ring` and `aws-lc-rs`, C/assembly libraries that do not
//! build for `x86_64-unknown-uefi`; RustCrypto's own provider crate is an alpha that needs an OS
//! random source. So this module is the glue, and only glue: every algorithm is RustCrypto's.
//!
//! - TLS 1.3 cipher suites `TLS_AES_128_GCM_SHA256` and `TLS_AES_256_GCM_SHA384`, and for servers
//!   that only speak TLS 1.2 `TLS_ECDHE_{ECDSA,RSA}_WITH_AES_{128_GCM_SHA256,256_GCM_SHA384}`
//!   (`aes-gcm`, `sha2`, `hmac`; HKDF and the TLS 1.2 PRF are rustls' own on top of the HMAC).
//! - Key exchange: ECDHE on secp256r1 (`p256`), the group every TLS 1.3 server must support.
//! - Signatures (certificates and the handshake's CertificateVerify): ECDSA P-256/P-384 with
//!   SHA-256/384, RSA PKCS#1 v1.5 and RSA-PSS with SHA-256/384/512 on 2048-4096-bit keys (`rsa`).
//! - Randomness: ChaCha20 (`rand_chacha`) seeded by the caller from the platform's RDRAND.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use pki_types::alg_id;
use pki_types::{AlgorithmIdentifier, InvalidSignature, PrivateKeyDer, SignatureVerificationAlgorithm};
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use rustls::crypto::cipher::{
    make_tls12_aad, make_tls13_aad, AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, KeyBlockShape,
    MessageDecrypter, MessageEncrypter, Nonce, OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload,
    Tls12AeadAlgorithm, Tls13AeadAlgorithm, UnsupportedOperationError,
};
use rustls::crypto::tls12::PrfUsingHmac;
use rustls::crypto::tls13::HkdfUsingHmac;
use rustls::crypto::{
    hash, hmac, ActiveKeyExchange, CipherSuiteCommon, CryptoProvider, GetRandomFailed, KeyProvider,
    SecureRandom, SharedSecret, SupportedKxGroup, WebPkiSupportedAlgorithms,
};
use rustls::sign::{Signer, SigningKey};
use rustls::{
    CipherSuite, ConnectionTrafficSecrets, ContentType, Error, NamedGroup, PeerMisbehaved, ProtocolVersion,
    SignatureScheme, SupportedCipherSuite, Tls12CipherSuite, Tls13CipherSuite,
};

// ---- randomness ----

/// The TLS client's random source: one ChaCha20 stream per boot, seeded from the platform.
static RNG: spin::Mutex<Option<ChaCha20Rng>> = spin::Mutex::new(None);

/// Seeds the TLS random source (once per boot, from the platform's random number generator).
pub fn seed(seed: [u8; 32]) {
    *RNG.lock() = Some(ChaCha20Rng::from_seed(seed));
}

/// Fills `buf` from the seeded random source; false before [`seed`].
pub fn random(buf: &mut [u8]) -> bool {
    fill(buf).is_ok()
}

/// `rand_core` view of [`RNG`]; fails (`GetRandomFailed`) until [`seed`] was called.
struct Rng;

fn fill(buf: &mut [u8]) -> Result<(), GetRandomFailed> {
    match RNG.lock().as_mut() {
        Some(r) => {
            r.fill_bytes(buf);
            Ok(())
        }
        None => Err(GetRandomFailed),
    }
}

const NOT_SEEDED: core::num::NonZeroU32 = match core::num::NonZeroU32::new(rand_core::Error::CUSTOM_START) {
    Some(n) => n,
    None => core::num::NonZeroU32::MIN,
};

impl RngCore for Rng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        // Key generation cannot report a failure through rand_core's infallible API: an unseeded
        // source gives zeros, and `start` below refuses to run unseeded.
        if fill(dest).is_err() {
            dest.fill(0);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        fill(dest).map_err(|_| rand_core::Error::from(NOT_SEEDED))
    }
}

impl CryptoRng for Rng {}

#[derive(Debug)]
struct Random;

impl SecureRandom for Random {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        fill(buf)
    }
}

// ---- hashes and HMAC ----

macro_rules! sha {
    ($hash:ident, $ctx:ident, $hmac:ident, $key:ident, $digest:ty, $alg:expr) => {
        struct $hash;
        struct $ctx($digest);
        struct $hmac;
        struct $key(::hmac::Hmac<$digest>);

        impl hash::Hash for $hash {
            fn start(&self) -> Box<dyn hash::Context> {
                Box::new($ctx(<$digest as sha2::Digest>::new()))
            }
            fn hash(&self, data: &[u8]) -> hash::Output {
                hash::Output::new(&<$digest as sha2::Digest>::digest(data))
            }
            fn output_len(&self) -> usize {
                <$digest as sha2::Digest>::output_size()
            }
            fn algorithm(&self) -> hash::HashAlgorithm {
                $alg
            }
        }

        impl hash::Context for $ctx {
            fn fork_finish(&self) -> hash::Output {
                hash::Output::new(&sha2::Digest::finalize(self.0.clone()))
            }
            fn fork(&self) -> Box<dyn hash::Context> {
                Box::new($ctx(self.0.clone()))
            }
            fn finish(self: Box<Self>) -> hash::Output {
                hash::Output::new(&sha2::Digest::finalize(self.0))
            }
            fn update(&mut self, data: &[u8]) {
                sha2::Digest::update(&mut self.0, data)
            }
        }

        impl hmac::Hmac for $hmac {
            fn with_key(&self, key: &[u8]) -> Box<dyn hmac::Key> {
                use ::hmac::digest::KeyInit;
                // HMAC takes keys of any length: this cannot fail.
                Box::new($key(
                    ::hmac::Hmac::<$digest>::new_from_slice(key).expect("HMAC accepts any key length"),
                ))
            }
            fn hash_output_len(&self) -> usize {
                <$digest as sha2::Digest>::output_size()
            }
        }

        impl hmac::Key for $key {
            fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> hmac::Tag {
                use ::hmac::Mac;
                let mut m = self.0.clone();
                m.update(first);
                for part in middle {
                    m.update(part);
                }
                m.update(last);
                hmac::Tag::new(&m.finalize().into_bytes())
            }
            fn tag_len(&self) -> usize {
                <$digest as sha2::Digest>::output_size()
            }
        }
    };
}

sha!(Sha256Hash, Sha256Ctx, Sha256Hmac, Sha256Key, sha2::Sha256, hash::HashAlgorithm::SHA256);
sha!(Sha384Hash, Sha384Ctx, Sha384Hmac, Sha384Key, sha2::Sha384, hash::HashAlgorithm::SHA384);

// ---- AES-GCM records ----

const GCM_TAG: usize = 16;

/// AES-GCM for TLS 1.3 records (RFC 8446 5.2): the inner content type is appended to the payload,
/// the nonce is the IV XOR the record sequence number, the record header is the associated data.
struct Gcm<A>(core::marker::PhantomData<A>);

/// AES-GCM with the 96-bit nonce TLS uses.
trait GcmCipher: aes_gcm::aead::AeadInPlace<NonceSize = aes_gcm::aead::consts::U12> + Send + Sync {}
impl<A: aes_gcm::aead::AeadInPlace<NonceSize = aes_gcm::aead::consts::U12> + Send + Sync> GcmCipher for A {}

struct GcmRecords<A> {
    cipher: A,
    iv: Iv,
}

impl<A> Tls13AeadAlgorithm for Gcm<A>
where
    A: GcmCipher + aes_gcm::aead::KeyInit + 'static,
{
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(GcmRecords { cipher: gcm_cipher::<A>(&key), iv })
    }
    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(GcmRecords { cipher: gcm_cipher::<A>(&key), iv })
    }
    fn key_len(&self) -> usize {
        A::key_size()
    }
    fn extract_keys(&self, _: AeadKey, _: Iv) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Err(UnsupportedOperationError)
    }
}

fn gcm_cipher<A: aes_gcm::aead::KeyInit>(key: &AeadKey) -> A {
    // rustls hands out keys of exactly `key_len()` bytes.
    A::new_from_slice(&key.as_ref()[..A::key_size()]).expect("AEAD key of the suite's length")
}

impl<A: GcmCipher> MessageEncrypter for GcmRecords<A> {
    fn encrypt(&mut self, msg: OutboundPlainMessage<'_>, seq: u64) -> Result<OutboundOpaqueMessage, Error> {
        let total = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total);
        payload.extend_from_chunks(&msg.payload);
        payload.extend_from_slice(&msg.typ.to_array());
        let nonce = Nonce::new(&self.iv, seq).0;
        let tag = self
            .cipher
            .encrypt_in_place_detached(
                aes_gcm::Nonce::from_slice(&nonce),
                &make_tls13_aad(total),
                payload.as_mut(),
            )
            .map_err(|_| Error::EncryptError)?;
        payload.extend_from_slice(&tag);
        Ok(OutboundOpaqueMessage::new(ContentType::ApplicationData, ProtocolVersion::TLSv1_2, payload))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + GCM_TAG
    }
}

impl<A: GcmCipher> MessageDecrypter for GcmRecords<A> {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &mut msg.payload;
        let len = payload.len();
        if len < GCM_TAG {
            return Err(Error::DecryptError);
        }
        let nonce = Nonce::new(&self.iv, seq).0;
        let (text, tag) = payload.split_at_mut(len - GCM_TAG);
        let tag = aes_gcm::Tag::clone_from_slice(tag);
        self.cipher
            .decrypt_in_place_detached(aes_gcm::Nonce::from_slice(&nonce), &make_tls13_aad(len), text, &tag)
            .map_err(|_| Error::DecryptError)?;
        payload.truncate(len - GCM_TAG);
        msg.into_tls13_unpadded_message()
    }
}

/// AES-GCM for TLS 1.2 records (RFC 5288): a 4-byte implicit salt and an 8-byte explicit nonce
/// sent before the ciphertext (Ember sends the sequence XOR the key block's extra bytes, as rustls'
/// own providers do); the sequence number, type, version and length are the associated data.
struct Gcm12<A>(core::marker::PhantomData<A>);

const EXPLICIT_NONCE: usize = 8;

impl<A> Tls12AeadAlgorithm for Gcm12<A>
where
    A: GcmCipher + aes_gcm::aead::KeyInit + 'static,
{
    fn encrypter(&self, key: AeadKey, iv: &[u8], extra: &[u8]) -> Box<dyn MessageEncrypter> {
        let mut full = [0u8; 12];
        full[..4].copy_from_slice(&iv[..4]);
        full[4..].copy_from_slice(&extra[..EXPLICIT_NONCE]);
        Box::new(Gcm12Records { cipher: gcm_cipher::<A>(&key), iv: Iv::new(full) })
    }
    fn decrypter(&self, key: AeadKey, iv: &[u8]) -> Box<dyn MessageDecrypter> {
        let mut salt = [0u8; 12];
        salt[..4].copy_from_slice(&iv[..4]);
        Box::new(Gcm12Records { cipher: gcm_cipher::<A>(&key), iv: Iv::new(salt) })
    }
    fn key_block_shape(&self) -> KeyBlockShape {
        KeyBlockShape { enc_key_len: A::key_size(), fixed_iv_len: 4, explicit_nonce_len: EXPLICIT_NONCE }
    }
    fn extract_keys(
        &self,
        _: AeadKey,
        _: &[u8],
        _: &[u8],
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Err(UnsupportedOperationError)
    }
}

struct Gcm12Records<A> {
    cipher: A,
    /// Salt and explicit-nonce base when encrypting; salt only (and zeros) when decrypting.
    iv: Iv,
}

impl<A: GcmCipher> MessageEncrypter for Gcm12Records<A> {
    fn encrypt(&mut self, msg: OutboundPlainMessage<'_>, seq: u64) -> Result<OutboundOpaqueMessage, Error> {
        let total = self.encrypted_payload_len(msg.payload.len());
        let nonce = Nonce::new(&self.iv, seq).0;
        let aad = make_tls12_aad(seq, msg.typ, msg.version, msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total);
        payload.extend_from_slice(&nonce[4..]);
        payload.extend_from_chunks(&msg.payload);
        let tag = self
            .cipher
            .encrypt_in_place_detached(
                aes_gcm::Nonce::from_slice(&nonce),
                &aad,
                &mut payload.as_mut()[EXPLICIT_NONCE..],
            )
            .map_err(|_| Error::EncryptError)?;
        payload.extend_from_slice(&tag);
        Ok(OutboundOpaqueMessage::new(msg.typ, msg.version, payload))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        EXPLICIT_NONCE + payload_len + GCM_TAG
    }
}

impl<A: GcmCipher> MessageDecrypter for Gcm12Records<A> {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let len = msg.payload.len();
        if len < EXPLICIT_NONCE + GCM_TAG {
            return Err(Error::DecryptError);
        }
        let plain_len = len - EXPLICIT_NONCE - GCM_TAG;
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&self.iv.as_ref()[..4]);
        nonce[4..].copy_from_slice(&msg.payload[..EXPLICIT_NONCE]);
        let aad = make_tls12_aad(seq, msg.typ, msg.version, plain_len);
        let payload = &mut msg.payload;
        let (text, tag) = payload[EXPLICIT_NONCE..].split_at_mut(plain_len);
        let tag = aes_gcm::Tag::clone_from_slice(tag);
        self.cipher
            .decrypt_in_place_detached(aes_gcm::Nonce::from_slice(&nonce), &aad, text, &tag)
            .map_err(|_| Error::DecryptError)?;
        payload.copy_within(EXPLICIT_NONCE..EXPLICIT_NONCE + plain_len, 0);
        payload.truncate(plain_len);
        Ok(msg.into_plain_message())
    }
}

static AES128_GCM12: Gcm12<aes_gcm::Aes128Gcm> = Gcm12(core::marker::PhantomData);
static AES256_GCM12: Gcm12<aes_gcm::Aes256Gcm> = Gcm12(core::marker::PhantomData);

const ECDSA_SCHEMES: &[SignatureScheme] =
    &[SignatureScheme::ECDSA_NISTP384_SHA384, SignatureScheme::ECDSA_NISTP256_SHA256];
const RSA_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA512,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA256,
];

macro_rules! tls12_suite {
    ($name:ident, $suite:ident, $hash:expr, $hmac:expr, $aead:expr, $sign:expr) => {
        static $name: Tls12CipherSuite = Tls12CipherSuite {
            common: CipherSuiteCommon {
                suite: CipherSuite::$suite,
                hash_provider: $hash,
                confidentiality_limit: 1 << 24,
            },
            prf_provider: &PrfUsingHmac($hmac),
            kx: rustls::crypto::KeyExchangeAlgorithm::ECDHE,
            sign: $sign,
            aead_alg: $aead,
        };
    };
}

tls12_suite!(
    ECDHE_ECDSA_AES128,
    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    &Sha256Hash,
    &Sha256Hmac,
    &AES128_GCM12,
    ECDSA_SCHEMES
);
tls12_suite!(
    ECDHE_RSA_AES128,
    TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    &Sha256Hash,
    &Sha256Hmac,
    &AES128_GCM12,
    RSA_SCHEMES
);
tls12_suite!(
    ECDHE_ECDSA_AES256,
    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    &Sha384Hash,
    &Sha384Hmac,
    &AES256_GCM12,
    ECDSA_SCHEMES
);
tls12_suite!(
    ECDHE_RSA_AES256,
    TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    &Sha384Hash,
    &Sha384Hmac,
    &AES256_GCM12,
    RSA_SCHEMES
);

static AES128_GCM: Gcm<aes_gcm::Aes128Gcm> = Gcm(core::marker::PhantomData);
static AES256_GCM: Gcm<aes_gcm::Aes256Gcm> = Gcm(core::marker::PhantomData);

static TLS13_AES_128_GCM_SHA256: Tls13CipherSuite = Tls13CipherSuite {
    common: CipherSuiteCommon {
        suite: CipherSuite::TLS13_AES_128_GCM_SHA256,
        hash_provider: &Sha256Hash,
        // RFC 8446 5.5: 2^24.5 full-size records for AES-GCM.
        confidentiality_limit: 1 << 24,
    },
    hkdf_provider: &HkdfUsingHmac(&Sha256Hmac),
    aead_alg: &AES128_GCM,
    quic: None,
};

static TLS13_AES_256_GCM_SHA384: Tls13CipherSuite = Tls13CipherSuite {
    common: CipherSuiteCommon {
        suite: CipherSuite::TLS13_AES_256_GCM_SHA384,
        hash_provider: &Sha384Hash,
        confidentiality_limit: 1 << 24,
    },
    hkdf_provider: &HkdfUsingHmac(&Sha384Hmac),
    aead_alg: &AES256_GCM,
    quic: None,
};

// ---- key exchange ----

#[derive(Debug)]
struct P256Group;

struct P256Exchange {
    secret: p256::ecdh::EphemeralSecret,
    public: Vec<u8>,
}

impl SupportedKxGroup for P256Group {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        if RNG.lock().is_none() {
            return Err(Error::FailedToGetRandomBytes);
        }
        let secret = p256::ecdh::EphemeralSecret::random(&mut Rng);
        let public = p256::EncodedPoint::from(secret.public_key()).as_bytes().to_vec();
        Ok(Box::new(P256Exchange { secret, public }))
    }
    fn name(&self) -> NamedGroup {
        NamedGroup::secp256r1
    }
}

impl ActiveKeyExchange for P256Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, Error> {
        // Uncompressed points only (RFC 8446 4.2.8.2); `from_sec1_bytes` checks it is on the curve.
        if peer.first() != Some(&4) {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        let peer = p256::PublicKey::from_sec1_bytes(peer).map_err(|_| PeerMisbehaved::InvalidKeyShare)?;
        let shared = self.secret.diffie_hellman(&peer);
        Ok(SharedSecret::from(&shared.raw_secret_bytes()[..]))
    }
    fn pub_key(&self) -> &[u8] {
        &self.public
    }
    fn group(&self) -> NamedGroup {
        NamedGroup::secp256r1
    }
}

static P256: P256Group = P256Group;

// ---- signature verification ----

/// A signature algorithm for `rustls-webpki`: the key and signature algorithm identifiers and the
/// RustCrypto check.
struct Verify {
    name: &'static str,
    key: AlgorithmIdentifier,
    signature: AlgorithmIdentifier,
    check: fn(key: &[u8], message: &[u8], signature: &[u8]) -> bool,
}

impl core::fmt::Debug for Verify {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name)
    }
}

impl SignatureVerificationAlgorithm for Verify {
    fn verify_signature(&self, key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), InvalidSignature> {
        if (self.check)(key, message, signature) {
            Ok(())
        } else {
            Err(InvalidSignature)
        }
    }
    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.key
    }
    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.signature
    }
}

fn ecdsa_p256<D: sha2::Digest>(key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let (Ok(key), Ok(sig)) =
        (p256::ecdsa::VerifyingKey::from_sec1_bytes(key), p256::ecdsa::Signature::from_der(signature))
    else {
        return false;
    };
    key.verify_prehash(&D::digest(message), &sig).is_ok()
}

fn ecdsa_p384<D: sha2::Digest>(key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    use p384::ecdsa::signature::hazmat::PrehashVerifier;
    let (Ok(key), Ok(sig)) =
        (p384::ecdsa::VerifyingKey::from_sec1_bytes(key), p384::ecdsa::Signature::from_der(signature))
    else {
        return false;
    };
    key.verify_prehash(&D::digest(message), &sig).is_ok()
}

/// The RSA public key (PKCS#1 `RSAPublicKey`), if it has 2048 to 4096 bits.
fn rsa_key(key: &[u8]) -> Option<rsa::RsaPublicKey> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::traits::PublicKeyParts;
    let key = rsa::RsaPublicKey::from_pkcs1_der(key).ok()?;
    (key.size() * 8 >= 2048).then_some(key)
}

fn rsa_pkcs1<D>(key: &[u8], message: &[u8], signature: &[u8]) -> bool
where
    D: sha2::Digest + rsa::pkcs8::AssociatedOid,
{
    use rsa::signature::Verifier;
    let (Some(key), Ok(sig)) = (rsa_key(key), rsa::pkcs1v15::Signature::try_from(signature)) else {
        return false;
    };
    rsa::pkcs1v15::VerifyingKey::<D>::new(key).verify(message, &sig).is_ok()
}

fn rsa_pss<D>(key: &[u8], message: &[u8], signature: &[u8]) -> bool
where
    D: sha2::Digest + sha2::digest::FixedOutputReset,
{
    use rsa::signature::Verifier;
    let (Some(key), Ok(sig)) = (rsa_key(key), rsa::pss::Signature::try_from(signature)) else {
        return false;
    };
    rsa::pss::VerifyingKey::<D>::new(key).verify(message, &sig).is_ok()
}

static ECDSA_P256_SHA256: Verify = Verify {
    name: "ECDSA P-256 SHA-256",
    key: alg_id::ECDSA_P256,
    signature: alg_id::ECDSA_SHA256,
    check: ecdsa_p256::<sha2::Sha256>,
};
static ECDSA_P256_SHA384: Verify = Verify {
    name: "ECDSA P-256 SHA-384",
    key: alg_id::ECDSA_P256,
    signature: alg_id::ECDSA_SHA384,
    check: ecdsa_p256::<sha2::Sha384>,
};
static ECDSA_P384_SHA256: Verify = Verify {
    name: "ECDSA P-384 SHA-256",
    key: alg_id::ECDSA_P384,
    signature: alg_id::ECDSA_SHA256,
    check: ecdsa_p384::<sha2::Sha256>,
};
static ECDSA_P384_SHA384: Verify = Verify {
    name: "ECDSA P-384 SHA-384",
    key: alg_id::ECDSA_P384,
    signature: alg_id::ECDSA_SHA384,
    check: ecdsa_p384::<sha2::Sha384>,
};
static RSA_PKCS1_SHA256: Verify = Verify {
    name: "RSA PKCS#1 SHA-256",
    key: alg_id::RSA_ENCRYPTION,
    signature: alg_id::RSA_PKCS1_SHA256,
    check: rsa_pkcs1::<sha2::Sha256>,
};
static RSA_PKCS1_SHA384: Verify = Verify {
    name: "RSA PKCS#1 SHA-384",
    key: alg_id::RSA_ENCRYPTION,
    signature: alg_id::RSA_PKCS1_SHA384,
    check: rsa_pkcs1::<sha2::Sha384>,
};
static RSA_PKCS1_SHA512: Verify = Verify {
    name: "RSA PKCS#1 SHA-512",
    key: alg_id::RSA_ENCRYPTION,
    signature: alg_id::RSA_PKCS1_SHA512,
    check: rsa_pkcs1::<sha2::Sha512>,
};
static RSA_PSS_SHA256: Verify = Verify {
    name: "RSA-PSS SHA-256",
    key: alg_id::RSA_ENCRYPTION,
    signature: alg_id::RSA_PSS_SHA256,
    check: rsa_pss::<sha2::Sha256>,
};
static RSA_PSS_SHA384: Verify = Verify {
    name: "RSA-PSS SHA-384",
    key: alg_id::RSA_ENCRYPTION,
    signature: alg_id::RSA_PSS_SHA384,
    check: rsa_pss::<sha2::Sha384>,
};
static RSA_PSS_SHA512: Verify = Verify {
    name: "RSA-PSS SHA-512",
    key: alg_id::RSA_ENCRYPTION,
    signature: alg_id::RSA_PSS_SHA512,
    check: rsa_pss::<sha2::Sha512>,
};

static ALGORITHMS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[
        &ECDSA_P256_SHA256,
        &ECDSA_P256_SHA384,
        &ECDSA_P384_SHA256,
        &ECDSA_P384_SHA384,
        &RSA_PKCS1_SHA256,
        &RSA_PKCS1_SHA384,
        &RSA_PKCS1_SHA512,
        &RSA_PSS_SHA256,
        &RSA_PSS_SHA384,
        &RSA_PSS_SHA512,
    ],
    // What a TLS 1.3 server may sign its handshake with (RFC 8446 4.2.3; no PKCS#1 v1.5 there).
    mapping: &[
        (SignatureScheme::ECDSA_NISTP256_SHA256, &[&ECDSA_P256_SHA256]),
        (SignatureScheme::ECDSA_NISTP384_SHA384, &[&ECDSA_P384_SHA384]),
        (SignatureScheme::RSA_PSS_SHA256, &[&RSA_PSS_SHA256]),
        (SignatureScheme::RSA_PSS_SHA384, &[&RSA_PSS_SHA384]),
        (SignatureScheme::RSA_PSS_SHA512, &[&RSA_PSS_SHA512]),
        (SignatureScheme::RSA_PKCS1_SHA256, &[&RSA_PKCS1_SHA256]),
        (SignatureScheme::RSA_PKCS1_SHA384, &[&RSA_PKCS1_SHA384]),
        (SignatureScheme::RSA_PKCS1_SHA512, &[&RSA_PKCS1_SHA512]),
    ],
};

// ---- server keys ----

/// The private key of a server certificate: ECDSA on P-256 or P-384 (RSA keys are refused: signing
/// with the `rsa` crate is not constant-time, RUSTSEC-2023-0071).
#[derive(Clone)]
pub enum EcdsaKey {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
}

impl core::fmt::Debug for EcdsaKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never the secret.
        f.write_str(match self {
            EcdsaKey::P256(_) => "EcdsaKey(P-256)",
            EcdsaKey::P384(_) => "EcdsaKey(P-384)",
        })
    }
}

impl EcdsaKey {
    /// A new P-256 key from the seeded random source; `None` before [`seed`].
    pub fn generate_p256() -> Option<Self> {
        let mut bytes = [0u8; 32];
        // A scalar of zero or above the group order is refused by `from_slice`; draw again (the
        // chance of needing to is about 2^-32).
        for _ in 0..8 {
            fill(&mut bytes).ok()?;
            if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&bytes) {
                bytes.fill(0);
                return Some(EcdsaKey::P256(k));
            }
        }
        None
    }

    /// Reads a PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) key.
    pub fn from_der(key: &PrivateKeyDer<'_>) -> Result<Self, &'static str> {
        use p256::pkcs8::DecodePrivateKey;
        match key {
            PrivateKeyDer::Pkcs8(k) => {
                let der = k.secret_pkcs8_der();
                if let Ok(k) = p256::SecretKey::from_pkcs8_der(der) {
                    Ok(EcdsaKey::P256(k.into()))
                } else if let Ok(k) = p384::SecretKey::from_pkcs8_der(der) {
                    Ok(EcdsaKey::P384(k.into()))
                } else {
                    Err("not an ECDSA P-256 or P-384 key (RSA and other key types are not supported)")
                }
            }
            PrivateKeyDer::Sec1(k) => {
                let der = k.secret_sec1_der();
                if let Ok(k) = p256::SecretKey::from_sec1_der(der) {
                    Ok(EcdsaKey::P256(k.into()))
                } else if let Ok(k) = p384::SecretKey::from_sec1_der(der) {
                    Ok(EcdsaKey::P384(k.into()))
                } else {
                    Err("not an ECDSA P-256 or P-384 key")
                }
            }
            _ => Err("an RSA key; Ember's HTTPS server needs an ECDSA P-256 or P-384 key"),
        }
    }

    /// The key in PKCS#8 DER, for storing.
    pub fn to_pkcs8_der(&self) -> Option<Vec<u8>> {
        use p256::pkcs8::EncodePrivateKey;
        let doc = match self {
            EcdsaKey::P256(k) => p256::SecretKey::from(k).to_pkcs8_der(),
            EcdsaKey::P384(k) => p384::SecretKey::from(k).to_pkcs8_der(),
        };
        doc.ok().map(|d| d.as_bytes().to_vec())
    }

    /// The public key as a DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Option<Vec<u8>> {
        use p256::pkcs8::EncodePublicKey;
        let doc = match self {
            EcdsaKey::P256(k) => p256::PublicKey::from(k.verifying_key()).to_public_key_der(),
            EcdsaKey::P384(k) => p384::PublicKey::from(k.verifying_key()).to_public_key_der(),
        };
        doc.ok().map(|d| d.as_bytes().to_vec())
    }

    /// A DER ECDSA signature of `message` (SHA-256 for P-256, SHA-384 for P-384; RFC 6979 nonces).
    pub fn sign_der(&self, message: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer as _;
        match self {
            EcdsaKey::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign(message);
                s.to_der().as_bytes().to_vec()
            }
            EcdsaKey::P384(k) => {
                let s: p384::ecdsa::Signature = k.sign(message);
                s.to_der().as_bytes().to_vec()
            }
        }
    }

    fn scheme(&self) -> SignatureScheme {
        match self {
            EcdsaKey::P256(_) => SignatureScheme::ECDSA_NISTP256_SHA256,
            EcdsaKey::P384(_) => SignatureScheme::ECDSA_NISTP384_SHA384,
        }
    }
}

impl SigningKey for EcdsaKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered.contains(&self.scheme()).then(|| Box::new(self.clone()) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<pki_types::SubjectPublicKeyInfoDer<'_>> {
        self.spki_der().map(pki_types::SubjectPublicKeyInfoDer::from)
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ECDSA
    }
}

impl Signer for EcdsaKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(self.sign_der(message))
    }

    fn scheme(&self) -> SignatureScheme {
        EcdsaKey::scheme(self)
    }
}

/// Loads server keys (see [`EcdsaKey::from_der`]).
#[derive(Debug)]
struct Keys;

impl KeyProvider for Keys {
    fn load_private_key(&self, key: PrivateKeyDer<'static>) -> Result<Arc<dyn SigningKey>, Error> {
        EcdsaKey::from_der(&key)
            .map(|k| Arc::new(k) as Arc<dyn SigningKey>)
            .map_err(|e| Error::General(alloc::string::String::from(e)))
    }
}

/// The provider: TLS 1.3 and TLS 1.2 ECDHE AES-GCM suites, P-256 key exchange, the verification
/// algorithms above.
pub fn provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![
            SupportedCipherSuite::Tls13(&TLS13_AES_128_GCM_SHA256),
            SupportedCipherSuite::Tls13(&TLS13_AES_256_GCM_SHA384),
            SupportedCipherSuite::Tls12(&ECDHE_ECDSA_AES128),
            SupportedCipherSuite::Tls12(&ECDHE_RSA_AES128),
            SupportedCipherSuite::Tls12(&ECDHE_ECDSA_AES256),
            SupportedCipherSuite::Tls12(&ECDHE_RSA_AES256),
        ],
        kx_groups: vec![&P256],
        signature_verification_algorithms: ALGORITHMS,
        secure_random: &Random,
        key_provider: &Keys,
    }
}

/// The verification algorithms, for checking certificates outside a handshake (tests, tools).
pub fn algorithms() -> &'static WebPkiSupportedAlgorithms {
    &ALGORITHMS
}
