//! Specifiers (`%n`, `%i`, `%H`, …, systemd.unit(5) "Specifiers"): which exist, and expanding
//! them where a value needs it. Pure: facts about the machine (host name, machine id, …) come
//! from the caller in a [`Context`]; a specifier whose fact is missing is an error, not a guess.

use crate::name::{UnitName, unescape, unescape_path};

/// Why a value's specifiers cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecifierError {
    /// `%x` where systemd knows no `x`.
    #[error("unknown specifier '%{0}': use '%%' for a literal '%'")]
    Unknown(char),
    /// A known specifier whose value the caller did not provide.
    #[error("specifier '%{0}' has no value here: {1} is not known")]
    Unavailable(char, &'static str),
}

/// The specifiers systemd 252 expands in unit files, plus those newer releases added (`%d`,
/// `%q`, `%y`, `%Y`), so that units written for newer systemd are not refused.
pub const KNOWN: &str = "aAbBcCdEfgGhHiIjJlLmMnNopPqrRsStTuUvVwWyY%";

/// Whether `c` after `%` is a specifier systemd knows.
pub fn is_known(c: char) -> bool {
    KNOWN.contains(c)
}

/// Checks that every `%x` in `value` is known; returns the first unknown one with its
/// character offset. A `%` at the very end is literal (as in systemd).
pub fn check(value: &str) -> Result<(), (usize, SpecifierError)> {
    let mut chars = value.chars().enumerate();
    while let Some((_, c)) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some((i, n)) if !is_known(n) => return Err((i - 1, SpecifierError::Unknown(n))),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Facts that specifiers expand to. Unit-name specifiers come from `unit`; machine facts from
/// the other fields (`None`: not known, expanding it is an error). Directory specifiers use
/// the system manager's directories (`%t` = `/run`, `%S` = `/var/lib`, …).
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The unit (`%n %N %p %P %i %I %j %J %f`).
    pub unit: Option<UnitName>,
    /// `%H`: the host name.
    pub host_name: Option<String>,
    /// `%m`: the machine id (32 hex digits).
    pub machine_id: Option<String>,
    /// `%b`: the boot id.
    pub boot_id: Option<String>,
    /// `%a`: the architecture (systemd's names: `x86-64`, `arm64`, …).
    pub architecture: Option<String>,
    /// `%v`: the kernel release.
    pub kernel_release: Option<String>,
    /// `%o %w %B %W %A %M`: ID, VERSION_ID, BUILD_ID, VARIANT_ID, IMAGE_VERSION, IMAGE_ID from
    /// os-release, by that key.
    pub os_release: Vec<(String, String)>,
    /// `%u %U %g %G %h %s`: user name, uid, group name, gid, home, shell of the manager
    /// (root's for the system manager).
    pub user: Option<UserFacts>,
}

/// The user facts behind `%u %U %g %G %h %s`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFacts {
    /// `%u`
    pub name: String,
    /// `%U`
    pub uid: u32,
    /// `%g`
    pub group: String,
    /// `%G`
    pub gid: u32,
    /// `%h`
    pub home: String,
    /// `%s`
    pub shell: String,
}

impl Context {
    /// A context knowing only the unit name.
    pub fn for_unit(unit: UnitName) -> Self {
        Self {
            unit: Some(unit),
            ..Self::default()
        }
    }

    fn os(&self, key: &str) -> Option<String> {
        self.os_release
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn expand_one(&self, c: char) -> Result<String, SpecifierError> {
        let unit = |what| {
            self.unit
                .as_ref()
                .ok_or(SpecifierError::Unavailable(c, what))
        };
        let fact = |v: &Option<String>, what| v.clone().ok_or(SpecifierError::Unavailable(c, what));
        let user = || {
            self.user
                .as_ref()
                .ok_or(SpecifierError::Unavailable(c, "the user"))
        };
        Ok(match c {
            '%' => "%".to_owned(),
            'n' => unit("the unit name")?.as_str().to_owned(),
            'N' => unit("the unit name")?.without_suffix().to_owned(),
            'p' => unit("the unit name")?.prefix().to_owned(),
            'P' => unescape(unit("the unit name")?.prefix()),
            'i' => unit("the unit name")?.instance().unwrap_or("").to_owned(),
            'I' => unescape(unit("the unit name")?.instance().unwrap_or("")),
            'j' => {
                let p = unit("the unit name")?.prefix();
                p.rsplit('-').next().unwrap_or(p).to_owned()
            }
            'J' => {
                let p = unit("the unit name")?.prefix();
                unescape(p.rsplit('-').next().unwrap_or(p))
            }
            'f' => {
                let u = unit("the unit name")?;
                match u.instance() {
                    Some(i) if !i.is_empty() => unescape_path(i),
                    _ => unescape_path(u.prefix()),
                }
            }
            'H' => fact(&self.host_name, "the host name")?,
            'l' => fact(&self.host_name, "the host name")?
                .split('.')
                .next()
                .unwrap_or("")
                .to_owned(),
            'm' => fact(&self.machine_id, "the machine id")?,
            'b' => fact(&self.boot_id, "the boot id")?,
            'a' => fact(&self.architecture, "the architecture")?,
            'v' => fact(&self.kernel_release, "the kernel release")?,
            'o' => self.os("ID").unwrap_or_default(),
            'w' => self.os("VERSION_ID").unwrap_or_default(),
            'B' => self.os("BUILD_ID").unwrap_or_default(),
            'W' => self.os("VARIANT_ID").unwrap_or_default(),
            'A' => self.os("IMAGE_VERSION").unwrap_or_default(),
            'M' => self.os("IMAGE_ID").unwrap_or_default(),
            'q' => fact(&self.host_name, "the host name")?,
            't' => "/run".to_owned(),
            'S' => "/var/lib".to_owned(),
            'C' => "/var/cache".to_owned(),
            'L' => "/var/log".to_owned(),
            'E' => "/etc".to_owned(),
            'T' => "/tmp".to_owned(),
            'V' => "/var/tmp".to_owned(),
            'd' => format!("/run/credentials/{}", unit("the unit name")?.as_str()),
            'c' => format!("/system.slice/{}", unit("the unit name")?.as_str()),
            'r' => "/system.slice".to_owned(),
            'R' => "/".to_owned(),
            'u' => user()?.name.clone(),
            'U' => user()?.uid.to_string(),
            'g' => user()?.group.clone(),
            'G' => user()?.gid.to_string(),
            'h' => user()?.home.clone(),
            's' => user()?.shell.clone(),
            'y' | 'Y' => return Err(SpecifierError::Unavailable(c, "the unit file path")),
            other => return Err(SpecifierError::Unknown(other)),
        })
    }

    /// Expands every specifier in `value`. A trailing lone `%` stays as it is.
    pub fn expand(&self, value: &str) -> Result<String, SpecifierError> {
        let mut out = String::with_capacity(value.len());
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some(n) => out.push_str(&self.expand_one(n)?),
                None => out.push('%'),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_specifiers() {
        let ctx = Context::for_unit(UnitName::parse("getty@tty1.service").unwrap());
        assert_eq!(
            ctx.expand("%n %N %p %i %I %f %%").unwrap(),
            "getty@tty1.service getty@tty1 getty tty1 tty1 /tty1 %"
        );
        let ctx = Context::for_unit(UnitName::parse("mnt-data\\x2dx.mount").unwrap());
        assert_eq!(
            ctx.expand("%f %j %J").unwrap(),
            "/mnt/data-x data\\x2dx data-x"
        );
        assert_eq!(ctx.expand("100%").unwrap(), "100%");
    }

    #[test]
    fn unknown_and_unavailable() {
        let ctx = Context::default();
        assert_eq!(ctx.expand("%z"), Err(SpecifierError::Unknown('z')));
        assert!(matches!(
            ctx.expand("%H"),
            Err(SpecifierError::Unavailable('H', _))
        ));
        assert_eq!(check("a %z"), Err((2, SpecifierError::Unknown('z'))));
        assert_eq!(check("a %% %n 5%"), Ok(()));
    }
}
