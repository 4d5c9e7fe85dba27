//! Who runs sendmail: the real user ID and its passwd entry.

use std::ffi::CStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    /// The login name, or `uid<N>` when the passwd database has none.
    pub name: String,
    /// From the GECOS field, if it has one.
    pub full_name: Option<String>,
}

/// The real user (not the effective one: a set-group-ID sendmail still
/// names who ran it, as Postfix's postdrop does).
pub fn current() -> User {
    // SAFETY: getuid(2) cannot fail.
    let uid = unsafe { libc::getuid() };
    match passwd(uid) {
        Some((name, gecos)) => User {
            uid,
            full_name: full_name(&gecos, &name),
            name,
        },
        None => User {
            uid,
            name: format!("uid{uid}"),
            full_name: None,
        },
    }
}

/// The login name and GECOS field of `uid`.
fn passwd(uid: u32) -> Option<(String, String)> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids);
        // getpwuid_r fills it with pointers into `buf`, which outlives
        // every use below.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut entry,
                buf.as_mut_ptr().cast::<libc::c_char>(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() || entry.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success the strings are NUL-terminated inside `buf`.
        let text = |p: *const libc::c_char| {
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        };
        let name = text(entry.pw_name)?;
        return Some((name, text(entry.pw_gecos).unwrap_or_default()));
    }
}

/// The full name in a GECOS field: its first comma-separated part, with
/// `&` standing for the login name capitalised (the BSD convention).
pub fn full_name(gecos: &str, login: &str) -> Option<String> {
    let first = gecos.split(',').next().unwrap_or("").trim();
    if first.is_empty() {
        return None;
    }
    let mut capitalised = login.to_string();
    if let Some(c) = capitalised.get_mut(..1) {
        c.make_ascii_uppercase();
    }
    Some(first.replace('&', &capitalised))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gecos_fields() {
        assert_eq!(
            full_name("Alice Liddell,Room 1,555-1234,", "alice").as_deref(),
            Some("Alice Liddell")
        );
        assert_eq!(full_name("& Smith", "bob").as_deref(), Some("Bob Smith"));
        assert_eq!(full_name(",,,", "carol"), None);
        assert_eq!(full_name("", "carol"), None);
    }

    #[test]
    fn the_current_user_has_a_name() {
        let user = current();
        assert!(!user.name.is_empty());
        // SAFETY: getuid(2) cannot fail.
        assert_eq!(user.uid, unsafe { libc::getuid() });
    }
}
