//! [`Name`]: a directory entry's name, stored inline when short.

use std::fmt;
use std::ops::Deref;

/// Longest name kept inline (most names are shorter: "passwd",
/// "file-0000123.txt").
const INLINE: usize = 22;

/// A file name's bytes (not necessarily UTF-8). Names of up to 22 bytes
/// live inside the value (24 bytes in all), longer ones on the heap, so a
/// million short names cost no allocation each.
#[derive(Clone)]
pub struct Name(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl From<&[u8]> for Name {
    fn from(b: &[u8]) -> Self {
        if b.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..b.len()].copy_from_slice(b);
            // OK to cast: b.len() <= INLINE < 256.
            Name(Repr::Inline {
                len: b.len() as u8,
                bytes,
            })
        } else {
            Name(Repr::Heap(b.into()))
        }
    }
}

impl Deref for Name {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Heap(b) => b,
        }
    }
}

impl AsRef<[u8]> for Name {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Name {}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (**self).cmp(&**other)
    }
}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_names_round_trip() {
        assert_eq!(std::mem::size_of::<Name>(), 24);
        for len in [0usize, 1, 22, 23, 255] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let n = Name::from(bytes.as_slice());
            assert_eq!(&*n, bytes.as_slice());
        }
        assert!(Name::from(&b"a"[..]) < Name::from(&b"b"[..]));
    }
}
