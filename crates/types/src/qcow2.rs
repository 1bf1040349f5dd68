//! Just enough of the qcow2 header to tell a qcow2 image from other data, read its virtual size, and see
//! whether it depends on other files (a backing file or an external data file). All fields are big-endian:
//! magic `QFI\xfb` at 0, version at 4, backing file name offset (u64) at 8 and length (u32) at 16, virtual
//! size at 24; version 3 headers carry incompatible feature bits at 72 (bit 2: external data file).

/// Bytes of an image's start that [`inspect`] and [`backing_file`] need (the backing file name lives in
/// the first cluster; the smallest cluster is 512 bytes, the default 64 KiB).
pub const HEAD_LEN: usize = 65536;

/// What an image's first bytes say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    /// A qcow2 image; `backing` is set when it names a backing file or an external data file.
    Qcow2 {
        virtual_size: u64,
        backing: bool,
    },
    Other,
}

fn be64(head: &[u8], o: usize) -> Option<u64> {
    head.get(o..o + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

fn be32(head: &[u8], o: usize) -> Option<u32> {
    head.get(o..o + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
}

pub fn inspect(head: &[u8]) -> Inspection {
    if head.len() < 32 || &head[0..4] != b"QFI\xfb" {
        return Inspection::Other;
    }
    let version = be32(head, 4).unwrap_or(0);
    let external_data = version >= 3 && be64(head, 72).is_some_and(|f| f & 0b100 != 0);
    Inspection::Qcow2 {
        virtual_size: be64(head, 24).unwrap_or(0),
        backing: be64(head, 8).unwrap_or(0) != 0 || external_data,
    }
}

/// The backing file name a qcow2 header points at, if any (and if it lies within `head`).
pub fn backing_file(head: &[u8]) -> Option<String> {
    if head.len() < 32 || &head[0..4] != b"QFI\xfb" {
        return None;
    }
    let off = usize::try_from(be64(head, 8)?).ok()?;
    let len = usize::try_from(be32(head, 16)?).ok()?;
    if off == 0 || len == 0 {
        return None;
    }
    let name = head.get(off..off.checked_add(len)?)?;
    String::from_utf8(name.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2(version: u32, backing: Option<&str>, size: u64, incompat: u64) -> Vec<u8> {
        let mut h = vec![0u8; 1024];
        h[0..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&version.to_be_bytes());
        if let Some(b) = backing {
            h[8..16].copy_from_slice(&512u64.to_be_bytes());
            h[16..20].copy_from_slice(&(b.len() as u32).to_be_bytes());
            h[512..512 + b.len()].copy_from_slice(b.as_bytes());
        }
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h[72..80].copy_from_slice(&incompat.to_be_bytes());
        h
    }

    #[test]
    fn reads_headers() {
        let plain = qcow2(3, None, 1 << 30, 0);
        assert_eq!(
            inspect(&plain),
            Inspection::Qcow2 {
                virtual_size: 1 << 30,
                backing: false
            }
        );
        assert_eq!(backing_file(&plain), None);
        let overlay = qcow2(3, Some("/var/lib/base/abc"), 10, 0);
        assert_eq!(
            inspect(&overlay),
            Inspection::Qcow2 {
                virtual_size: 10,
                backing: true
            }
        );
        assert_eq!(backing_file(&overlay).as_deref(), Some("/var/lib/base/abc"));
        assert_eq!(backing_file(&overlay[..520]), None, "name beyond the bytes read");
        assert_eq!(
            inspect(&qcow2(3, None, 10, 0b100)),
            Inspection::Qcow2 {
                virtual_size: 10,
                backing: true
            }
        );
        // Version 2 headers have no feature bits: the same bytes mean nothing there.
        assert_eq!(
            inspect(&qcow2(2, None, 10, 0b100)),
            Inspection::Qcow2 {
                virtual_size: 10,
                backing: false
            }
        );
        assert_eq!(inspect(b"not an image"), Inspection::Other);
        assert_eq!(inspect(&[]), Inspection::Other);
    }
}
