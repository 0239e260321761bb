//! Client-side encryption with the age format: the shipping side seals each
//! payload for the target's X25519 recipients (public keys only), the
//! restoring side opens it with an identity file that stays offline until a
//! restore. `drctl keys init` makes an identity.

use crate::object::{Encryption, Record};
use age::secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;

/// Why a key, a recipient or a payload could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "a target without recipients stores patient data readable by anyone with bucket \
         access: list the public keys (`recipients = [\"age1…\"]`, from `drctl keys init`), \
         or say `encryption = \"none\"` to store plaintext on purpose"
    )]
    NoRecipients,
    #[error(
        "recipient {index} is a secret key (AGE-SECRET-KEY-…): the shipping host must never \
         hold a key that decrypts the archive; put its public recipient (age1…, printed by \
         `drctl keys init`) here and keep the identity offline"
    )]
    SecretKeyGiven { index: usize },
    #[error("recipient {index} ({shown}) is not an age X25519 recipient (age1…): {why}")]
    BadRecipient {
        index: usize,
        shown: String,
        why: String,
    },
    #[error("`encryption = {0:?}` must be \"age\" (the default, with recipients) or \"none\"")]
    BadMode(String),
    #[error("`encryption = \"none\"` with recipients: remove one of the two")]
    NoneWithRecipients,
    #[error("cannot read identity file {path}: {why}")]
    IdentityFile { path: String, why: String },
    #[error("identity file {0} holds no identity")]
    NoIdentity(String),
    #[error(
        "{name} is encrypted (age) and no identity was given: pass --identity FILE (the \
         secret key from `drctl keys init`)"
    )]
    NeedIdentity { name: String },
    #[error(
        "{name} cannot be decrypted with the identity given: it was encrypted for other \
         recipients (wrong key file?) — {why}"
    )]
    WrongIdentity { name: String, why: String },
    #[error("{name}: the encrypted payload is damaged: {why}")]
    Damaged { name: String, why: String },
    #[error("encryption failed: {0}")]
    Seal(String),
}

/// How the shipping side protects payloads.
#[derive(Clone)]
pub enum Sealer {
    Age(Vec<age::x25519::Recipient>),
    Plain,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sealer::Age(r) => write!(f, "age ({} recipients)", r.len()),
            Sealer::Plain => write!(f, "none"),
        }
    }
}

impl Sealer {
    /// From a target's config: `recipients` and `encryption` (None = "age").
    pub fn from_config(
        recipients: &[String],
        encryption: Option<&str>,
    ) -> Result<Self, CryptoError> {
        match encryption {
            Some("none") if recipients.is_empty() => return Ok(Sealer::Plain),
            Some("none") => return Err(CryptoError::NoneWithRecipients),
            None | Some("age") => {}
            Some(other) => return Err(CryptoError::BadMode(other.to_string())),
        }
        if recipients.is_empty() {
            return Err(CryptoError::NoRecipients);
        }
        let mut out = Vec::with_capacity(recipients.len());
        for (index, r) in recipients.iter().enumerate() {
            let r = r.trim();
            if r.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
                return Err(CryptoError::SecretKeyGiven { index });
            }
            let parsed =
                r.parse::<age::x25519::Recipient>()
                    .map_err(|why| CryptoError::BadRecipient {
                        index,
                        shown: r.chars().take(12).collect::<String>() + "…",
                        why: why.to_string(),
                    })?;
            out.push(parsed);
        }
        Ok(Sealer::Age(out))
    }

    pub fn encryption(&self) -> Encryption {
        match self {
            Sealer::Age(_) => Encryption::Age,
            Sealer::Plain => Encryption::None,
        }
    }

    /// The payload for `plaintext`: an age file with a fresh file key, or the
    /// bytes themselves.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let recipients = match self {
            Sealer::Plain => return Ok(plaintext.to_vec()),
            Sealer::Age(r) => r,
        };
        let enc =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| CryptoError::Seal(e.to_string()))?;
        // age adds a ~200-byte header per recipient and 16 bytes per 64 KiB.
        let mut out = Vec::with_capacity(plaintext.len() + plaintext.len() / 4096 + 512);
        let mut w = enc
            .wrap_output(&mut out)
            .map_err(|e| CryptoError::Seal(e.to_string()))?;
        w.write_all(plaintext)
            .and_then(|()| w.finish().map(|_| ()))
            .map_err(|e| CryptoError::Seal(e.to_string()))?;
        Ok(out)
    }

    /// Seals exactly `len` bytes read from `src` (a shorter source is an
    /// `UnexpectedEof` error), streaming: the plaintext passes once through
    /// a buffer of [`SEAL_CHUNK`] bytes and is hashed on the way in, the
    /// payload is hashed on the way out. A segment is never held twice, and
    /// no pass over it is made only to hash it.
    pub fn seal_from(&self, src: &mut dyn Read, len: u64) -> std::io::Result<SealedPayload> {
        let cap = usize::try_from(len)
            .map_err(|_| std::io::Error::other(format!("{len} bytes do not fit in memory")))?;
        // age adds a ~200-byte header per recipient and 16 bytes per 64 KiB.
        let mut out = Vec::with_capacity(cap.saturating_add(cap / 4096).saturating_add(512));
        let mut plain = Sha256::new();
        let mut sink = HashingSink {
            out: &mut out,
            sha: Sha256::new(),
        };
        let mut buf = vec![0u8; SEAL_CHUNK.min(cap)];
        let mut pump = |w: &mut dyn Write| -> std::io::Result<()> {
            let mut left = cap;
            while left > 0 {
                let n = left.min(buf.len());
                src.read_exact(&mut buf[..n])?;
                plain.update(&buf[..n]);
                w.write_all(&buf[..n])?;
                left -= n;
            }
            Ok(())
        };
        match self {
            Sealer::Plain => pump(&mut sink)?,
            Sealer::Age(recipients) => {
                let enc = age::Encryptor::with_recipients(
                    recipients.iter().map(|r| r as &dyn age::Recipient),
                )
                .map_err(|e| std::io::Error::other(format!("age: {e}")))?;
                let mut w = enc.wrap_output(&mut sink)?;
                pump(&mut w)?;
                w.finish()?;
            }
        }
        let payload_sha256 = sink.sha.finalize().into();
        Ok(SealedPayload {
            payload: out,
            plain_sha256: plain.finalize().into(),
            payload_sha256,
        })
    }
}

/// Plaintext bytes [`Sealer::seal_from`] holds at a time.
pub const SEAL_CHUNK: usize = 1 << 20;

/// What [`Sealer::seal_from`] made.
pub struct SealedPayload {
    pub payload: Vec<u8>,
    pub plain_sha256: [u8; 32],
    pub payload_sha256: [u8; 32],
}

/// A writer that appends to a buffer and hashes what it appends.
struct HashingSink<'a> {
    out: &'a mut Vec<u8>,
    sha: Sha256,
}

impl Write for HashingSink<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.out.extend_from_slice(b);
        self.sha.update(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The restoring side's keys.
#[derive(Default)]
pub struct Opener {
    identities: Vec<Box<dyn age::Identity>>,
}

impl Opener {
    /// No identity: opens only plaintext objects.
    pub fn none() -> Self {
        Opener::default()
    }

    /// Reads an age identity file (`AGE-SECRET-KEY-1…` lines, `#` comments).
    pub fn from_file(path: &Path) -> Result<Self, CryptoError> {
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| CryptoError::IdentityFile {
            path: shown.clone(),
            why: e.to_string(),
        })?;
        let identities = age::IdentityFile::from_buffer(std::io::BufReader::new(file))
            .map_err(|e| CryptoError::IdentityFile {
                path: shown.clone(),
                why: e.to_string(),
            })?
            .into_identities()
            .map_err(|e| CryptoError::IdentityFile {
                path: shown.clone(),
                why: e.to_string(),
            })?;
        if identities.is_empty() {
            return Err(CryptoError::NoIdentity(shown));
        }
        Ok(Opener { identities })
    }

    pub fn has_identity(&self) -> bool {
        !self.identities.is_empty()
    }

    /// The plaintext of an object's payload.
    pub fn open(&self, rec: &Record, payload: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if rec.encryption == Encryption::None {
            return Ok(payload.to_vec());
        }
        let name = rec.name.clone();
        if self.identities.is_empty() {
            return Err(CryptoError::NeedIdentity { name });
        }
        let dec = age::Decryptor::new_buffered(payload).map_err(|e| CryptoError::Damaged {
            name: name.clone(),
            why: e.to_string(),
        })?;
        let mut r = dec
            .decrypt(self.identities.iter().map(|i| i.as_ref()))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => CryptoError::WrongIdentity {
                    name: name.clone(),
                    why: e.to_string(),
                },
                other => CryptoError::Damaged {
                    name: name.clone(),
                    why: other.to_string(),
                },
            })?;
        let mut out = Vec::with_capacity(usize::try_from(rec.len).unwrap_or(0).min(64 << 20));
        r.read_to_end(&mut out).map_err(|e| CryptoError::Damaged {
            name,
            why: e.to_string(),
        })?;
        Ok(out)
    }
}

/// A new identity: (secret key line, public recipient).
pub fn generate() -> (String, String) {
    let id = age::x25519::Identity::generate();
    let secret = id.to_string().expose_secret().to_string();
    (secret, id.to_public().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::Kind;

    fn rec(enc: Encryption) -> Record {
        Record {
            kind: Kind::Segment,
            stream: "s".into(),
            name: "n".into(),
            start: 0,
            offset: 0,
            len: 0,
            sha256: String::new(),
            prev_chain: None,
            chain: None,
            encryption: enc,
            payload_len: 0,
            payload_sha256: String::new(),
            node: "a".into(),
            epoch: 1,
            written_at_ms: 0,
        }
    }

    /// The streaming seal opens to the same bytes, hashes what went in and
    /// what came out, and refuses a source shorter than it was told.
    #[test]
    fn seal_from_streams_and_hashes() {
        let (secret, public) = generate();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.txt");
        std::fs::write(&key, format!("{secret}\n")).unwrap();
        let opener = Opener::from_file(&key).unwrap();
        // Over several 1 MiB chunks, with a ragged end.
        let plain: Vec<u8> = (0..(3 * SEAL_CHUNK + 12_345))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let sha = |b: &[u8]| -> [u8; 32] { Sha256::digest(b).into() };
        let age = Sealer::from_config(&[public], None).unwrap();
        for (sealer, enc) in [(&age, Encryption::Age), (&Sealer::Plain, Encryption::None)] {
            let out = sealer
                .seal_from(&mut plain.as_slice(), plain.len() as u64)
                .unwrap();
            assert_eq!(out.plain_sha256, sha(&plain));
            assert_eq!(out.payload_sha256, sha(&out.payload));
            assert_eq!(opener.open(&rec(enc), &out.payload).unwrap(), plain);
            let err = sealer
                .seal_from(&mut &plain[..100], 101)
                .err()
                .expect("a short source is refused");
            assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
        }
        // Empty is fine (an empty segment).
        let out = age.seal_from(&mut &[][..], 0).unwrap();
        assert!(opener
            .open(&rec(Encryption::Age), &out.payload)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn seal_open_and_refusals() {
        let (secret, public) = generate();
        let (_, other_public) = generate();
        assert!(secret.starts_with("AGE-SECRET-KEY-1"));
        assert!(public.starts_with("age1"));
        let sealer = Sealer::from_config(&[public.clone(), other_public], None).unwrap();
        let marker = b"PATIENT-MARKER-42 ".repeat(10_000);
        let payload = sealer.seal(&marker).unwrap();
        assert!(!payload.windows(17).any(|w| w == b"PATIENT-MARKER-42"));

        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.txt");
        std::fs::write(&key, format!("# test\n{secret}\n")).unwrap();
        let opener = Opener::from_file(&key).unwrap();
        assert_eq!(
            opener.open(&rec(Encryption::Age), &payload).unwrap(),
            marker
        );

        let (wrong, _) = generate();
        std::fs::write(&key, format!("{wrong}\n")).unwrap();
        let err = Opener::from_file(&key)
            .unwrap()
            .open(&rec(Encryption::Age), &payload)
            .unwrap_err();
        assert!(matches!(err, CryptoError::WrongIdentity { .. }), "{err}");
        let err = Opener::none()
            .open(&rec(Encryption::Age), &payload)
            .unwrap_err();
        assert!(err.to_string().contains("--identity"), "{err}");
        let mut damaged = payload.clone();
        let at = damaged.len() - 5;
        damaged[at] ^= 1;
        assert!(matches!(
            Opener::from_file(&dir.path().join("missing")).err(),
            Some(CryptoError::IdentityFile { .. })
        ));
        std::fs::write(&key, format!("{secret}\n")).unwrap();
        let err = Opener::from_file(&key)
            .unwrap()
            .open(&rec(Encryption::Age), &damaged)
            .unwrap_err();
        assert!(matches!(err, CryptoError::Damaged { .. }), "{err}");

        assert!(matches!(
            Sealer::from_config(&[], None),
            Err(CryptoError::NoRecipients)
        ));
        assert!(matches!(
            Sealer::from_config(&[secret], None),
            Err(CryptoError::SecretKeyGiven { index: 0 })
        ));
        assert!(matches!(
            Sealer::from_config(&["age1nope".into()], None),
            Err(CryptoError::BadRecipient { .. })
        ));
        assert!(matches!(
            Sealer::from_config(&[public], Some("none")),
            Err(CryptoError::NoneWithRecipients)
        ));
        assert!(matches!(
            Sealer::from_config(&[], Some("none")),
            Ok(Sealer::Plain)
        ));
        assert!(matches!(
            Sealer::from_config(&[], Some("aes")),
            Err(CryptoError::BadMode(_))
        ));
    }
}
