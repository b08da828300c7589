//! Just enough ELF64 parsing to tell whether an executable is statically linked.

/// `e_type` of a fixed-address executable.
const ET_EXEC: u16 = 2;
/// Program header type of the dynamic section.
const PT_DYNAMIC: u32 = 2;
/// Program header type naming the program interpreter (dynamic loader).
const PT_INTERP: u32 = 3;

fn u16_at(image: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        image.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(image: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        image.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(image: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        image.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Checks that `image` is a little-endian ELF64 fixed-address executable without a
/// program interpreter or dynamic section, i.e. needs no loader and no shared library.
pub(crate) fn check_static_executable(image: &[u8]) -> Result<(), String> {
    if image.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file".into());
    }
    if image.get(4..6) != Some([2u8, 1].as_slice()) {
        return Err("not a little-endian ELF64 file".into());
    }
    let malformed = || "malformed ELF header".to_owned();
    let e_type = u16_at(image, 16).ok_or_else(malformed)?;
    if e_type != ET_EXEC {
        return Err(format!(
            "ELF type is {e_type}, expected {ET_EXEC} (a static, non-PIE executable)"
        ));
    }
    let phoff = u64_at(image, 32).and_then(|v| usize::try_from(v).ok());
    let phoff = phoff.ok_or_else(malformed)?;
    let phentsize = usize::from(u16_at(image, 54).ok_or_else(malformed)?);
    let phnum = usize::from(u16_at(image, 56).ok_or_else(malformed)?);
    for i in 0..phnum {
        let at = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or_else(malformed)?;
        match u32_at(image, at).ok_or_else(malformed)? {
            PT_INTERP => return Err("has a program interpreter (dynamically linked)".into()),
            PT_DYNAMIC => return Err("has a dynamic section (dynamically linked)".into()),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_static_executable_own_binary_rejected() -> Result<(), String> {
        // The test binary itself is a dynamically linked PIE.
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let image = std::fs::read(me).map_err(|e| e.to_string())?;
        assert!(check_static_executable(&image).is_err());
        Ok(())
    }

    #[test]
    fn check_static_executable_garbage_rejected() {
        assert!(check_static_executable(b"").is_err());
        assert!(check_static_executable(b"\x7fELF\x02\x01").is_err());
        assert!(check_static_executable(&[0u8; 64]).is_err());
    }
}
