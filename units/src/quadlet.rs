//! Podman Quadlet `.container` files, accepted as units: `NAME.container` becomes the service
//! `NAME.service` that runs its image the way flotilla runs every image (`[X-Flotilla] Image=`,
//! `RootDirectory=` on the unpacked image, systemd's sandbox), so people can bring the files
//! they already have.
//!
//! # Translation of `[Container]`
//!
//! - `Image=` (required) becomes `[X-Flotilla] Image=`.
//! - `Exec=` alone becomes `[X-Flotilla] Args=`: the image's entrypoint runs with these
//!   arguments in place of its `Cmd`, as in podman. `Entrypoint=` (with or without `Exec=`)
//!   becomes `ExecStart=`: `Entrypoint` followed by `Exec`. Neither: the image's own entrypoint
//!   and command run.
//! - `Environment=`, `EnvironmentFile=`, `WorkingDir=` (as `WorkingDirectory=`), `User=`,
//!   `Group=` carry over to `[Service]`.
//! - `Volume=HOST:CONTAINER[:OPTIONS]` becomes `BindPaths=` (`BindReadOnlyPaths=` with `ro`);
//!   a named or anonymous volume is an error: give a host path.
//! - Keys that only mean something to podman (networks, published ports, labels, ...) are
//!   ignored with a warning; unknown keys too.
//!
//! Every other section (`[Unit]`, `[Service]`, `[Install]`, `[X-Fleet]`, ...) passes through
//! as written; the translated keys are appended to `[Service]`.

use crate::diagnostic::{Diagnostic, Location};
use crate::syntax::parse;
use crate::unit::{Section, Unit};

/// The suffix of a Quadlet container file.
pub const SUFFIX: &str = ".container";

/// A `.container` file translated into a service unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    /// The service's name: `NAME.service` for `NAME.container`.
    pub name: String,
    /// The service unit's text.
    pub text: String,
    /// What is wrong (errors) or ignored (warnings), at the `.container` file's lines.
    pub diagnostics: Vec<Diagnostic>,
}

/// Whether `name` is a Quadlet container file's name.
pub fn is_container(name: &str) -> bool {
    name.ends_with(SUFFIX) && name.len() > SUFFIX.len()
}

/// Keys of `[Container]` that only podman acts on: ignored, with a warning.
const PODMAN_ONLY: &[&str] = &[
    "AddCapability",
    "AddDevice",
    "Annotation",
    "AutoUpdate",
    "ContainerName",
    "DNS",
    "DropCapability",
    "ExposeHostPort",
    "HostName",
    "IP",
    "IP6",
    "Label",
    "LogDriver",
    "Network",
    "NoNewPrivileges",
    "Notify",
    "PodmanArgs",
    "PublishPort",
    "Pull",
    "ReadOnly",
    "RunInit",
    "SecurityLabelDisable",
    "Timezone",
    "UserNS",
];

/// Translates the Quadlet file `name` (`NAME.container`; `file` is its path for diagnostics)
/// with content `text` into the service unit flotilla runs.
pub fn container_to_service(file: &str, name: &str, text: &str) -> Translated {
    let service_name = format!("{}.service", name.strip_suffix(SUFFIX).unwrap_or(name));
    let parsed = parse(file, text);
    let mut diagnostics = parsed.diagnostics.clone();
    let unit = Unit::from_file(&parsed.file);
    let start = Location {
        file: file.into(),
        line: 1,
        column: 1,
    };

    let mut service: Vec<(String, String)> = Vec::new();
    let (mut image, mut args) = (None, None);
    match unit.section("Container") {
        None => diagnostics.push(Diagnostic::error(
            &start,
            "a .container file needs a [Container] section with Image=",
        )),
        Some(c) => (image, args) = translate(c, &mut service, &mut diagnostics),
    }

    let mut out = String::new();
    let mut wrote_service = false;
    for section in unit.sections.iter().filter(|s| s.name != "Container") {
        out.push_str(&format!("[{}]\n", section.name));
        for e in &section.entries {
            out.push_str(&format!("{}={}\n", e.key, e.value));
        }
        if section.name == "Service" {
            for (k, v) in &service {
                out.push_str(&format!("{k}={v}\n"));
            }
            wrote_service = true;
        }
        out.push('\n');
    }
    if !wrote_service {
        out.push_str("[Service]\n");
        for (k, v) in &service {
            out.push_str(&format!("{k}={v}\n"));
        }
        out.push('\n');
    }
    if let Some(image) = image {
        out.push_str(&format!("[X-Flotilla]\nImage={image}\n"));
        if let Some(args) = args {
            out.push_str(&format!("Args={args}\n"));
        }
    }
    Translated {
        name: service_name,
        text: out,
        diagnostics,
    }
}

/// Appends the `[Service]` keys `[Container]` asks for to `service`; returns the image and
/// the arguments for its entrypoint (`Exec=` without `Entrypoint=`).
fn translate(
    c: &Section,
    service: &mut Vec<(String, String)>,
    diagnostics: &mut Vec<Diagnostic>,
) -> (Option<String>, Option<String>) {
    let mut image = None;
    let (mut exec, mut entrypoint) = (None, None);
    for e in &c.entries {
        match e.key.as_str() {
            "Image" if e.value.is_empty() => image = None,
            "Image" => image = Some(e.value.clone()),
            "Exec" => exec = Some(e.value.clone()).filter(|v| !v.is_empty()),
            "Entrypoint" => entrypoint = Some(e.value.clone()).filter(|v| !v.is_empty()),
            "Environment" | "EnvironmentFile" | "User" | "Group" => {
                service.push((e.key.clone(), e.value.clone()));
            }
            "WorkingDir" => service.push(("WorkingDirectory".into(), e.value.clone())),
            "Volume" => match volume(&e.value) {
                Ok(bind) => service.push(bind),
                Err(why) => diagnostics.push(Diagnostic::error(&e.value_at(), why)),
            },
            key if PODMAN_ONLY.contains(&key) => diagnostics.push(Diagnostic::warning(
                &e.at,
                format!("{key}= means something to podman only: flotilla runs the image with systemd, ignoring"),
            )),
            key => diagnostics.push(Diagnostic::warning(
                &e.at,
                format!("unknown key {key}= in [Container], ignoring"),
            )),
        }
    }
    let (command, args) = match (entrypoint, exec) {
        (Some(entry), Some(exec)) => (Some(format!("{entry} {exec}")), None),
        (Some(entry), None) => (Some(entry), None),
        (None, exec) => (None, exec),
    };
    if let Some(command) = command {
        service.push(("ExecStart".into(), command));
    }
    if image.is_none() {
        diagnostics.push(Diagnostic::error(&c.at, "[Container] needs Image="));
    }
    (image, args)
}

/// `HOST:CONTAINER[:OPTIONS]` as a `BindPaths=` (or `BindReadOnlyPaths=` with `ro`) entry.
fn volume(value: &str) -> Result<(String, String), String> {
    let parts: Vec<&str> = value.split(':').collect();
    let (host, inside, options) = match parts.as_slice() {
        [host, inside] => (*host, *inside, ""),
        [host, inside, options] => (*host, *inside, *options),
        _ => {
            return Err(format!(
                "Volume={value}: expected HOST:CONTAINER[:OPTIONS] (an anonymous volume is not supported)"
            ));
        }
    };
    if !host.starts_with('/') {
        return Err(format!(
            "Volume={value}: named volumes are not supported: give an absolute host path"
        ));
    }
    if !inside.starts_with('/') {
        return Err(format!(
            "Volume={value}: the path in the container must be absolute"
        ));
    }
    let read_only = options.split(',').any(|o| o == "ro");
    let key = if read_only {
        "BindReadOnlyPaths"
    } else {
        "BindPaths"
    };
    Ok((key.into(), format!("{host}:{inside}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "\
[Unit]
Description=a web server

[Container]
Image=registry.example:5000/busybox:latest
Exec=/bin/httpd -f -p 8080
Environment=GREETING=hello
Volume=/srv/www:/www:ro
Volume=/var/lib/web:/data
WorkingDir=/www
PublishPort=8080:8080

[Service]
Restart=always

[Install]
WantedBy=multi-user.target

[X-Fleet]
Global=true
";

    #[test]
    fn a_container_becomes_a_service_that_runs_its_image() {
        let t = container_to_service("web.container", "web.container", WEB);
        assert_eq!(t.name, "web.service");
        assert_eq!(
            t.text,
            "\
[Unit]
Description=a web server

[Service]
Restart=always
Environment=GREETING=hello
BindReadOnlyPaths=/srv/www:/www
BindPaths=/var/lib/web:/data
WorkingDirectory=/www

[Install]
WantedBy=multi-user.target

[X-Fleet]
Global=true

[X-Flotilla]
Image=registry.example:5000/busybox:latest
Args=/bin/httpd -f -p 8080
"
        );
        let shown: Vec<String> = t.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            shown,
            [
                "web.container:11:1: warning: PublishPort= means something to podman only: flotilla runs the image with systemd, ignoring"
            ]
        );
        // What it gives is a unit flotilla accepts.
        let v = crate::verify(&t.name, &t.text, &[]);
        assert!(
            !crate::diagnostic::has_errors(&v.diagnostics),
            "{:?}",
            v.diagnostics
        );
        assert!(v.flotilla.image.is_some());
    }

    #[test]
    fn without_exec_the_image_runs_its_own_command() {
        let t = container_to_service("x.container", "x.container", "[Container]\nImage=busybox\n");
        assert_eq!(t.text, "[Service]\n\n[X-Flotilla]\nImage=busybox\n");
        assert!(t.diagnostics.is_empty());
        let v = crate::verify(&t.name, &t.text, &[]);
        assert!(
            !crate::diagnostic::has_errors(&v.diagnostics),
            "{:?}",
            v.diagnostics
        );
    }

    #[test]
    fn an_entrypoint_goes_before_exec() {
        let t = container_to_service(
            "x.container",
            "x.container",
            "[Container]\nImage=i\nEntrypoint=/bin/sh -c\nExec='echo hi'\n",
        );
        assert!(
            t.text.contains("ExecStart=/bin/sh -c 'echo hi'\n"),
            "{}",
            t.text
        );
    }

    #[test]
    fn what_cannot_run_is_an_error_at_its_line() {
        let t = container_to_service(
            "bad.container",
            "bad.container",
            "[Container]\nVolume=data:/data\nVolume=/only\n",
        );
        let shown: Vec<String> = t.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            shown,
            [
                "bad.container:2:8: Volume=data:/data: named volumes are not supported: give an absolute host path",
                "bad.container:3:8: Volume=/only: expected HOST:CONTAINER[:OPTIONS] (an anonymous volume is not supported)",
                "bad.container:1:1: [Container] needs Image=",
            ]
        );
        assert!(crate::diagnostic::has_errors(&t.diagnostics));
        let none = container_to_service("n.container", "n.container", "[Unit]\nDescription=x\n");
        assert!(crate::diagnostic::has_errors(&none.diagnostics));
        assert!(is_container("web.container") && !is_container(".container"));
    }
}
