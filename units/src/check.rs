//! What systemd checks when it loads a unit, beyond syntax: the settings whose bad values make
//! systemd refuse the unit (`Exec*=` command lines, `WorkingDirectory=`, the checks of
//! `service_verify`, `socket_verify`, `timer_verify`, `path_verify`, `mount_verify` in systemd
//! 252), and unknown sections, which systemd warns about and ignores.
//!
//! Unknown keys get a warning, as in systemd (the table of known keys is systemd 252's).
//!
//! Not checked (systemd checks them against the running system, this crate does no I/O):
//! whether executables exist, whether units named in dependencies exist, user and group
//! names.

use crate::diagnostic::{Diagnostic, Location};
use crate::exec;
use crate::keys;
use crate::name::{UnitName, UnitType, escape_path};
use crate::specifier;
use crate::unit::{Section, Unit};

/// `Exec*=` settings, by section.
const EXEC_KEYS: &[(&str, &[&str])] = &[
    (
        "Service",
        &[
            "ExecCondition",
            "ExecStartPre",
            "ExecStart",
            "ExecStartPost",
            "ExecReload",
            "ExecStop",
            "ExecStopPost",
        ],
    ),
    (
        "Socket",
        &[
            "ExecStartPre",
            "ExecStartPost",
            "ExecStopPre",
            "ExecStopPost",
        ],
    ),
];

/// systemd's `parse_boolean`.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

fn section_start(section: &Section) -> Location {
    section.at.clone()
}

/// The commands of list setting `key` after resets (invalid commands with `-` dropped, as
/// systemd drops them).
fn commands(section: Option<&Section>, key: &str) -> Vec<exec::ExecCommand> {
    let Some(section) = section else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in section.entries.iter().filter(|e| e.key == key) {
        if entry.value.is_empty() {
            out.clear();
        } else {
            out.extend(exec::parse(&entry.value).commands);
        }
    }
    out
}

/// Checks `unit` (named `name`, `None` when unknown: type-specific checks are skipped) and
/// returns every problem.
pub fn check(unit: &Unit, name: Option<&UnitName>) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let unit_type = name.map(UnitName::unit_type);
    if let Some(t) = unit_type {
        for section in &unit.sections {
            let known = section.name == "Unit"
                || section.name == "Install"
                || Some(section.name.as_str()) == t.section()
                || section.name.starts_with("X-");
            if !known {
                diags.push(Diagnostic::warning(
                    &section.at,
                    format!(
                        "unknown section '[{}]' in a .{t} unit, ignoring",
                        section.name
                    ),
                ));
                continue;
            }
            unknown_keys(section, &mut diags);
        }
    } else {
        for section in &unit.sections {
            unknown_keys(section, &mut diags);
        }
    }
    for (section_name, keys) in EXEC_KEYS {
        if unit_type.is_some_and(|t| t.section() != Some(section_name)) {
            continue;
        }
        let Some(section) = unit.section(section_name) else {
            continue;
        };
        for entry in section
            .entries
            .iter()
            .filter(|e| keys.contains(&e.key.as_str()))
        {
            if entry.value.is_empty() {
                continue;
            }
            let line = exec::parse(&entry.value);
            for (error, ignored) in &line.errors {
                let msg = format!("{}=: {error}", entry.key);
                diags.push(if *ignored {
                    Diagnostic::warning(
                        &entry.value_at(),
                        format!("{msg}, ignoring the command ('-' prefix)"),
                    )
                } else {
                    Diagnostic::error(&entry.value_at(), msg)
                });
            }
            for w in &line.warnings {
                diags.push(Diagnostic::warning(
                    &entry.value_at(),
                    format!("{}=: {}", entry.key, w.0),
                ));
            }
        }
    }
    for section_name in ["Service", "Socket", "Mount", "Swap"] {
        if unit_type.is_some_and(|t| t.section() != Some(section_name)) {
            continue;
        }
        let Some(section) = unit.section(section_name) else {
            continue;
        };
        for entry in section
            .entries
            .iter()
            .filter(|e| e.key == "WorkingDirectory")
        {
            let v = entry.value.strip_prefix('-').unwrap_or(&entry.value);
            if v.is_empty() || v == "~" {
                continue;
            }
            if let Err((_, e)) = specifier::check(v) {
                diags.push(Diagnostic::error(
                    &entry.value_at(),
                    format!("WorkingDirectory=: {e}"),
                ));
            } else if !v.starts_with('/')
                && !v.starts_with("%h")
                && !v.starts_with("%t")
                && !v.starts_with("%S")
            {
                diags.push(Diagnostic::error(
                    &entry.value_at(),
                    format!(
                        "WorkingDirectory= path '{v}' is not absolute: give an absolute path or '~'"
                    ),
                ));
            }
        }
    }
    // systemd stops at the first fatal setting and never gets to the unit-level checks.
    if diags.iter().any(Diagnostic::is_error) {
        return diags;
    }
    match (name, unit_type) {
        (Some(_), Some(UnitType::Service)) => check_service(unit, &mut diags),
        (Some(n), Some(t)) => check_other(unit, n, t, &mut diags),
        _ => {}
    }
    diags
}

/// Warns about keys systemd 252 does not know in one of its sections (keys starting with `X-`
/// are for other programs: systemd ignores them silently, so do we).
fn unknown_keys(section: &Section, diags: &mut Vec<Diagnostic>) {
    for entry in &section.entries {
        if !entry.key.starts_with("X-") && keys::is_known(&section.name, &entry.key) == Some(false)
        {
            diags.push(Diagnostic::warning(
                &entry.at,
                format!(
                    "unknown key '{}' in section [{}], ignoring",
                    entry.key, section.name
                ),
            ));
        }
    }
}

fn check_service(unit: &Unit, diags: &mut Vec<Diagnostic>) {
    let service = unit.section("Service");
    let at = service
        .map(section_start)
        .or_else(|| unit.sections.first().map(section_start));
    let at = at.unwrap_or(Location {
        file: "".into(),
        line: 0,
        column: 0,
    });
    let value = |key: &str| service.and_then(|s| s.value(key));
    let start = commands(service, "ExecStart");
    // An image unit without ExecStart= runs the image's entrypoint and command: the agent
    // writes that ExecStart= when it starts the unit, so systemd sees one.
    let image_starts = start.is_empty() && unit.value("X-Flotilla", "Image").is_some();
    // `[X-Flotilla] Args=` only means something to an image unit that has no ExecStart=.
    if let Some(args) = unit
        .section("X-Flotilla")
        .and_then(|s| s.last("Args"))
        .filter(|e| !e.value.is_empty())
    {
        if unit.value("X-Flotilla", "Image").is_none() {
            diags.push(Diagnostic::warning(
                &args.at,
                "Args= without Image= means nothing, ignoring".to_owned(),
            ));
        } else if !start.is_empty() {
            diags.push(Diagnostic::warning(
                &args.at,
                "Args= is ignored: the unit's ExecStart= is the whole command".to_owned(),
            ));
        }
    }
    // systemd's default type (service_fix_up): dbus with BusName=, oneshot without
    // ExecStart=, simple otherwise.
    let default_type = if value("BusName").is_some() {
        "dbus"
    } else if start.is_empty() && !image_starts {
        "oneshot"
    } else {
        "simple"
    };
    let service_type = match value("Type") {
        None => default_type,
        Some(
            t @ ("simple" | "exec" | "forking" | "oneshot" | "dbus" | "notify" | "notify-reload"
            | "idle"),
        ) => t,
        Some(other) => {
            if let Some(e) = service.and_then(|s| s.last("Type")) {
                diags.push(Diagnostic::warning(
                    &e.value_at(),
                    format!("failed to parse service type '{other}', ignoring: expected simple, exec, forking, oneshot, dbus, notify, notify-reload or idle"),
                ));
            }
            default_type
        }
    };
    let oneshot = service_type == "oneshot";
    let stop = commands(service, "ExecStop");
    let success_action = unit
        .value("Unit", "SuccessAction")
        .is_some_and(|v| v != "none");
    let remain = value("RemainAfterExit")
        .and_then(parse_bool)
        .unwrap_or(false);
    // systemd's service_verify stops at the first of these.
    let start_missing = start.is_empty() && !image_starts;
    if start_missing && stop.is_empty() && !success_action {
        diags.push(Diagnostic::error(
            &at,
            "service has no ExecStart=, ExecStop= or SuccessAction=, refusing it",
        ));
    } else if !oneshot && start_missing {
        diags.push(Diagnostic::error(
            &at,
            format!("service has no ExecStart=, which only Type=oneshot services may omit (Type={service_type})"),
        ));
    } else if !remain && start_missing && !success_action {
        diags.push(Diagnostic::error(
            &at,
            "service has no ExecStart= and no SuccessAction= and does not have RemainAfterExit=yes, refusing it",
        ));
    } else if !oneshot && start.len() > 1 {
        let second = service
            .map(|s| s.effective_entries("ExecStart"))
            .and_then(|e| e.get(1).or(e.first()).map(|e| e.at.clone()))
            .unwrap_or(at.clone());
        diags.push(Diagnostic::error(
            &second,
            format!("service has more than one ExecStart= command, which only Type=oneshot services may have (Type={service_type})"),
        ));
    } else if oneshot && matches!(value("Restart"), Some("always" | "on-success")) {
        diags.push(Diagnostic::error(
            &at,
            "Restart=always and Restart=on-success are not allowed for Type=oneshot services",
        ));
    } else if service_type == "dbus" && value("BusName").is_none() {
        diags.push(Diagnostic::error(
            &at,
            "service is of Type=dbus but has no BusName=",
        ));
    }
}

fn check_other(unit: &Unit, name: &UnitName, t: UnitType, diags: &mut Vec<Diagnostic>) {
    let Some(section_name) = t.section() else {
        return;
    };
    let section = unit.section(section_name);
    let at = section
        .map(section_start)
        .or_else(|| unit.sections.first().map(section_start))
        .unwrap_or(Location {
            file: "".into(),
            line: 0,
            column: 0,
        });
    let has_any =
        |keys: &[&str]| section.is_some_and(|s| keys.iter().any(|k| !s.values(k).is_empty()));
    match t {
        UnitType::Socket
            if !has_any(&[
                "ListenStream",
                "ListenDatagram",
                "ListenSequentialPacket",
                "ListenFIFO",
                "ListenSpecial",
                "ListenNetlink",
                "ListenMessageQueue",
                "ListenUSBFunction",
            ]) =>
        {
            diags.push(Diagnostic::error(
                    &at,
                    "socket has no Listen setting (ListenStream=, ListenDatagram=, ListenFIFO=, …), refusing it",
                ));
        }
        UnitType::Timer
            if !has_any(&[
                "OnActiveSec",
                "OnBootSec",
                "OnStartupSec",
                "OnUnitActiveSec",
                "OnUnitInactiveSec",
                "OnCalendar",
                "OnClockChange",
                "OnTimezoneChange",
            ]) =>
        {
            diags.push(Diagnostic::error(
                    &at,
                    "timer has no OnCalendar=, OnActiveSec=, OnBootSec= or other time setting, refusing it",
                ));
        }
        UnitType::Path
            if !has_any(&[
                "PathExists",
                "PathExistsGlob",
                "PathChanged",
                "PathModified",
                "DirectoryNotEmpty",
            ]) =>
        {
            diags.push(Diagnostic::error(
                &at,
                "path unit has no PathExists=, PathChanged= or other path setting, refusing it",
            ));
        }
        UnitType::Mount
            if section
                .and_then(|s| s.value("What"))
                .is_none_or(|w| w.trim().is_empty()) =>
        {
            diags.push(Diagnostic::error(
                &at,
                "mount has no What= setting, refusing it: say what to mount",
            ));
        }
        UnitType::Mount | UnitType::Automount => {
            let where_ = section
                .and_then(|s| s.last("Where"))
                .filter(|e| !e.value.is_empty());
            if let Some(w) = where_
                && !name.is_template()
                && escape_path(&w.value) != name.without_suffix()
            {
                diags.push(Diagnostic::error(
                    &w.value_at(),
                    format!(
                        "Where={} does not match the unit name: a unit mounting it is named '{}.{t}'",
                        w.value,
                        escape_path(&w.value)
                    ),
                ));
            }
        }
        _ => {}
    }
}
