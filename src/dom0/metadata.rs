//! dom0: a qube's settings saved with its archive (as the archive's comment) and read back
//! strictly. The text comes back from the disposable, so it is hostile: only allowlisted keys,
//! every value checked (qube names, labels from a fixed list, bounded numbers, no control
//! characters); anything else is dropped with a warning, never passed on to a Qubes tool.
//!
//! ```text
//! qubes-borg-settings/1
//! class=AppVM                 AppVM | StandaloneVM | TemplateVM
//! mode=files                  files | image
//! private-size=2147483648     bytes
//! pref.label=red              pref.PROP for PROP in PREFS (only properties set explicitly)
//! pref.template=debian-12
//! feature.service.cups=1      feature.NAME=VALUE
//! tag=work-stuff
//! ```

use crate::job::spec::{self, Mode};

pub const MAGIC: &str = "qubes-borg-settings/1";
/// Largest settings text accepted.
pub const MAX_TEXT: usize = 16 * 1024;
/// Most lines.
pub const MAX_LINES: usize = 256;
/// Longest feature value.
pub const MAX_FEATURE_VALUE: usize = 256;
/// Largest private volume accepted (16 TiB).
pub const MAX_SIZE: u64 = 16 << 40;

/// Qube labels (qubes-core-admin `qubes/app.py` default labels).
pub const LABELS: &[&str] = &[
    "red", "orange", "yellow", "green", "gray", "blue", "purple", "black",
];
pub const CLASSES: &[&str] = &["AppVM", "StandaloneVM", "TemplateVM"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A qube name (not dom0 for netvm).
    Qube,
    Label,
    /// Integer in 0..=max.
    Number(u64),
    Bool,
    /// `[A-Za-z0-9._-]`, up to 64 bytes, may be empty.
    Word,
    OneOf(&'static [&'static str]),
}

/// The properties saved and restored, with the check of their values.
pub const PREFS: &[(&str, Kind)] = &[
    ("template", Kind::Qube),
    ("label", Kind::Label),
    ("netvm", Kind::Qube),
    ("memory", Kind::Number(1 << 20)),
    ("maxmem", Kind::Number(1 << 20)),
    ("vcpus", Kind::Number(512)),
    ("kernel", Kind::Word),
    ("virt_mode", Kind::OneOf(&["pv", "pvh", "hvm"])),
    ("include_in_backups", Kind::Bool),
];

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    pub class: Option<String>,
    pub mode: Option<Mode>,
    pub private_size: Option<u64>,
    /// (property, value) in the order of PREFS.
    pub prefs: Vec<(String, String)>,
    pub features: Vec<(String, String)>,
    pub tags: Vec<String>,
}

impl Settings {
    pub fn pref(&self, name: &str) -> Option<&str> {
        self.prefs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `[A-Za-z0-9._-]`, not starting with `-` (it becomes an argument of a Qubes tool).
fn word(s: &str, max: usize) -> bool {
    s.len() <= max
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn number(s: &str, max: u64) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|n| *n <= max)
}

/// Checks one property value; Err says why.
pub fn check_pref(prop: &str, kind: Kind, v: &str) -> Result<(), &'static str> {
    let ok = match kind {
        Kind::Qube => {
            if prop == "netvm" && v == "dom0" {
                return Err("dom0 cannot be a netvm");
            }
            // An empty netvm (none) is a valid setting.
            (prop == "netvm" && v.is_empty()) || spec::check_qube(v).is_ok()
        }
        Kind::Label => LABELS.contains(&v),
        Kind::Number(max) => number(v, max).is_some(),
        Kind::Bool => v == "True" || v == "False",
        Kind::Word => word(v, 64),
        Kind::OneOf(list) => list.contains(&v),
    };
    if ok {
        Ok(())
    } else {
        Err("invalid value")
    }
}

/// Feature names `[A-Za-z0-9._-]` (1..=64), values printable ASCII (up to 256 bytes); neither
/// starts with `-` (no option can be slipped into `qvm-features NAME F V`).
pub fn check_feature(name: &str, value: &str) -> Result<(), &'static str> {
    if name.is_empty() || !word(name, 64) {
        return Err("invalid feature name");
    }
    if value.len() > MAX_FEATURE_VALUE
        || value.starts_with('-')
        || !value.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return Err("invalid feature value");
    }
    Ok(())
}

/// Tags `[A-Za-z0-9_-]` (1..=64, not starting with `-`: a conservative subset of what Qubes accepts); `created-by-*` tags are
/// qubesd's own and never restored.
pub fn check_tag(t: &str) -> Result<(), &'static str> {
    if t.is_empty()
        || t.len() > 64
        || t.starts_with('-')
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
    {
        return Err("invalid tag");
    }
    if t.starts_with("created-by-") {
        return Err("set by qubesd, not restored");
    }
    Ok(())
}

/// The settings as text (the archive's comment). Values are checked again on the way in:
/// anything that would not parse back is left out.
pub fn render(s: &Settings) -> String {
    let mut out = vec![MAGIC.to_string()];
    if let Some(c) = &s.class {
        if CLASSES.contains(&c.as_str()) {
            out.push(format!("class={c}"));
        }
    }
    if let Some(m) = s.mode {
        out.push(format!("mode={}", m.as_str()));
    }
    if let Some(n) = s.private_size.filter(|n| *n <= MAX_SIZE) {
        out.push(format!("private-size={n}"));
    }
    for (k, v) in &s.prefs {
        if let Some((_, kind)) = PREFS.iter().find(|(p, _)| p == k) {
            if check_pref(k, *kind, v).is_ok() {
                out.push(format!("pref.{k}={v}"));
            }
        }
    }
    for (k, v) in &s.features {
        if check_feature(k, v).is_ok() {
            out.push(format!("feature.{k}={v}"));
        }
    }
    for t in &s.tags {
        if check_tag(t).is_ok() {
            out.push(format!("tag={t}"));
        }
    }
    out.truncate(MAX_LINES);
    out.join("\n")
}

fn shown(s: &str) -> String {
    crate::job::progress::sanitize(s.as_bytes(), 60)
}

/// Reads settings text (hostile). Err when it is not settings at all (too large, wrong first
/// line); otherwise the accepted settings and one warning per line left out.
pub fn parse(untrusted_text: &str) -> Result<(Settings, Vec<String>), String> {
    if untrusted_text.len() > MAX_TEXT {
        return Err(format!("settings larger than {MAX_TEXT} bytes"));
    }
    let mut lines = untrusted_text.split('\n');
    if lines.next() != Some(MAGIC) {
        return Err(format!("no {MAGIC} settings in this archive"));
    }
    let mut s = Settings::default();
    let mut warn = Vec::new();
    let mut tmp_prefs: Vec<(String, String)> = Vec::new();
    for (i, untrusted_line) in lines.enumerate() {
        let n = i + 2;
        if n > MAX_LINES {
            warn.push(format!(
                "settings: more than {MAX_LINES} lines, the rest ignored"
            ));
            break;
        }
        if untrusted_line.is_empty() {
            continue;
        }
        let mut drop = |why: &str| {
            warn.push(format!(
                "settings line {n} ignored ({why}): {}",
                shown(untrusted_line)
            ))
        };
        if untrusted_line.chars().any(|c| c.is_control()) {
            drop("control character");
            continue;
        }
        let Some((key, value)) = untrusted_line.split_once('=') else {
            drop("not KEY=VALUE");
            continue;
        };
        if let Some(prop) = key.strip_prefix("pref.") {
            let Some((p, kind)) = PREFS.iter().find(|(p, _)| *p == prop) else {
                drop("property not restored");
                continue;
            };
            if tmp_prefs.iter().any(|(k, _)| k == p) {
                drop("given twice");
                continue;
            }
            match check_pref(p, *kind, value) {
                Ok(()) => tmp_prefs.push((p.to_string(), value.to_string())),
                Err(why) => drop(why),
            }
        } else if let Some(f) = key.strip_prefix("feature.") {
            if s.features.iter().any(|(k, _)| k == f) {
                drop("given twice");
                continue;
            }
            match check_feature(f, value) {
                Ok(()) => s.features.push((f.to_string(), value.to_string())),
                Err(why) => drop(why),
            }
        } else {
            match key {
                "class" if s.class.is_none() => {
                    if CLASSES.contains(&value) {
                        s.class = Some(value.to_string())
                    } else {
                        drop("unknown class")
                    }
                }
                "mode" if s.mode.is_none() => match Mode::parse(value) {
                    Some(m) => s.mode = Some(m),
                    None => drop("unknown mode"),
                },
                "private-size" if s.private_size.is_none() => match number(value, MAX_SIZE) {
                    Some(v) => s.private_size = Some(v),
                    None => drop("invalid size"),
                },
                "tag" => match check_tag(value) {
                    Ok(()) if !s.tags.iter().any(|t| t == value) => s.tags.push(value.into()),
                    Ok(()) => drop("given twice"),
                    Err(why) => drop(why),
                },
                "class" | "mode" | "private-size" => drop("given twice"),
                _ => drop("unknown key"),
            }
        }
    }
    // Keep PREFS order (template before netvm and label: the order qvm-prefs is run in).
    for (p, _) in PREFS {
        if let Some(x) = tmp_prefs.iter().find(|(k, _)| k == p) {
            s.prefs.push(x.clone());
        }
    }
    Ok((s, warn))
}

/// `qvm-prefs VM` (all properties) lines `NAME  -  VALUE` (set) / `NAME  D  VALUE` (default) /
/// `NAME  U`: the explicitly set properties of PREFS, plus the class (`klass`).
pub fn from_qvm_prefs(out: &str) -> (Option<String>, Vec<(String, String)>) {
    let mut class = None;
    let mut prefs = Vec::new();
    for l in out.lines() {
        let mut it = l.splitn(2, ' ');
        let name = it.next().unwrap_or("");
        let rest = it.next().unwrap_or("").trim_start();
        let Some(value) = rest.strip_prefix("-  ").or((rest == "-").then_some("")) else {
            continue;
        };
        if name == "klass" {
            class = Some(value.to_string());
        } else if let Some((_, kind)) = PREFS.iter().find(|(p, _)| *p == name) {
            // qvm_prefs.py prints an unset qube property (None) as `None`.
            let v = if *kind == Kind::Qube && value == "None" {
                ""
            } else {
                value
            };
            prefs.push((name.to_string(), v.to_string()));
        }
    }
    (class, prefs)
}

/// `qvm-prefs VM` lines: the current value of each property of PREFS, set or default (`U`,
/// unset, is left out); an unset qube property (`None`) reads as empty.
pub fn current_prefs(out: &str) -> Vec<(String, String)> {
    let mut prefs = Vec::new();
    for l in out.lines() {
        let mut it = l.splitn(2, ' ');
        let name = it.next().unwrap_or("");
        let rest = it.next().unwrap_or("").trim_start();
        let value = match rest.split_once("  ") {
            Some(("-" | "D", v)) => v,
            None if rest == "-" || rest == "D" => "",
            _ => continue,
        };
        if let Some((_, kind)) = PREFS.iter().find(|(p, _)| *p == name) {
            let v = if *kind == Kind::Qube && value == "None" {
                ""
            } else {
                value
            };
            prefs.push((name.to_string(), v.to_string()));
        }
    }
    prefs
}

/// `qvm-features VM` lines `NAME  VALUE` (aligned by `column -t`).
pub fn from_qvm_features(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (!k.is_empty()).then(|| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Reads the settings of `qube` at backup time (`qvm-prefs`, `qvm-features`, `qvm-tags`) and
/// renders them as `setting` lines. A failing call leaves its part out with a note: the
/// backup of the data goes on.
pub(super) fn gather(
    ctx: &mut super::session::Ctx,
    qube: &str,
    mode: Mode,
    private_size: Option<u64>,
) -> Vec<String> {
    let mut s = Settings {
        mode: Some(mode),
        private_size,
        ..Settings::default()
    };
    match ctx.call(&["qvm-prefs", qube]) {
        Ok(o) => (s.class, s.prefs) = from_qvm_prefs(&String::from_utf8_lossy(&o)),
        Err(e) => ctx.note(&format!("{qube}: settings not saved: {e}")),
    }
    match ctx.call(&["qvm-features", qube]) {
        Ok(o) => s.features = from_qvm_features(&String::from_utf8_lossy(&o)),
        Err(e) => ctx.note(&format!("{qube}: features not saved: {e}")),
    }
    match ctx.call(&["qvm-tags", qube, "list"]) {
        Ok(o) => {
            s.tags = String::from_utf8_lossy(&o)
                .lines()
                .map(String::from)
                .collect()
        }
        Err(e) => ctx.note(&format!("{qube}: tags not saved: {e}")),
    }
    let text = render(&s);
    let mut lines: Vec<String> = Vec::new();
    let mut total = 0;
    for l in text.split('\n') {
        total += l.len() + 1;
        if total > crate::job::spec::MAX_SETTINGS_BYTES {
            ctx.note(&format!("{qube}: settings too long, the rest not saved"));
            break;
        }
        lines.push(l.to_string());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dom0::qubes::{Fake, Reply};

    fn sample() -> Settings {
        Settings {
            class: Some("AppVM".into()),
            mode: Some(Mode::Files),
            private_size: Some(2 << 30),
            prefs: vec![
                ("template".into(), "debian-12".into()),
                ("label".into(), "red".into()),
                ("netvm".into(), "".into()),
                ("memory".into(), "400".into()),
            ],
            features: vec![("service.cups".into(), "1".into())],
            tags: vec!["work-stuff".into()],
        }
    }

    #[test]
    fn settings_round_trip() {
        let text = render(&sample());
        let (s, w) = parse(&text).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(s, sample());
    }

    #[test]
    fn hostile_settings_are_dropped_with_a_warning() {
        let text = [
            MAGIC,
            "pref.netvm=dom0",
            "pref.label=hotpink",
            "pref.template=-rf",
            "pref.template=../../etc",
            "pref.memory=99999999999",
            "pref.memory=-1",
            "pref.kernel=a b",
            "pref.qrexec_timeout=5",
            "pref.default_dispvm=x",
            "feature.a b=1",
            "feature.x=\u{1b}[2J",
            &format!("feature.long={}", "x".repeat(300)),
            "tag=created-by-dom0",
            "tag=a/b",
            "class=AdminVM",
            "mode=raw",
            "private-size=1e9",
            "unknown=1",
            "no equals sign",
            "pref.vcpus=2\r",
            "pref.kernel=--help",
            "feature.--unset=1",
            "feature.y=-D",
            "tag=-x",
            "pref.label=blue",
            "pref.label=green",
        ]
        .join("\n");
        let (s, w) = parse(&text).unwrap();
        assert_eq!(s.prefs, vec![("label".to_string(), "blue".to_string())]);
        assert!(s.features.is_empty() && s.tags.is_empty());
        assert_eq!((s.class, s.mode, s.private_size), (None, None, None));
        assert_eq!(w.len(), 25, "{w:#?}");
        assert!(w.iter().any(|x| x.contains("dom0 cannot be a netvm")));
        // Warnings print no control characters.
        assert!(w.iter().all(|x| x.chars().all(|c| !c.is_control())));
    }

    #[test]
    fn not_settings_or_too_large_is_an_error() {
        assert!(parse("").is_err());
        assert!(parse("class=AppVM").is_err());
        let big = format!("{MAGIC}\n{}", "tag=a\n".repeat(MAX_TEXT / 6 + 1));
        assert!(parse(&big).unwrap_err().contains("larger"));
        let many = format!(
            "{MAGIC}\n{}",
            (0..400).map(|i| format!("tag=t{i}\n")).collect::<String>()
        );
        let (s, w) = parse(&many).unwrap();
        assert_eq!(s.tags.len(), MAX_LINES - 1);
        assert!(w[0].contains("more than"));
    }

    fn settings(lines: &[&str]) -> (Settings, Vec<String>) {
        parse(&[&[MAGIC][..], lines].concat().join("\n")).unwrap()
    }

    /// One line alone after the magic line: accepted (no warning) or the warning's reason.
    fn one(line: &str) -> Result<Settings, String> {
        let (s, w) = settings(&[line]);
        match &w[..] {
            [] => Ok(s),
            [x] => Err(x.clone()),
            _ => panic!("{w:?}"),
        }
    }

    #[test]
    fn every_property_kind_accepts_its_values() {
        for line in [
            "pref.template=debian-12",
            "pref.netvm=",
            "pref.netvm=sys-firewall",
            "pref.label=black",
            "pref.memory=0",
            "pref.memory=1048576",
            "pref.maxmem=00000000000000000001",
            "pref.vcpus=512",
            "pref.kernel=",
            "pref.kernel=6.6.63-1.fc37",
            "pref.virt_mode=pvh",
            "pref.include_in_backups=True",
            "pref.include_in_backups=False",
        ] {
            let s = one(line).unwrap_or_else(|w| panic!("{line}: {w}"));
            let (k, v) = line["pref.".len()..].split_once('=').unwrap();
            assert_eq!(s.pref(k), Some(v), "{line}");
        }
        assert_eq!(one("pref.vcpus=2").unwrap().pref("label"), None);
    }

    #[test]
    fn every_property_kind_refuses_values_just_outside() {
        for line in [
            "pref.template=",
            "pref.netvm=dom0",
            "pref.label=Red",
            "pref.memory=1048577",
            "pref.maxmem=000000000000000000001",
            "pref.vcpus=513",
            "pref.vcpus=",
            "pref.kernel=-x",
            "pref.kernel=a/b",
            "pref.virt_mode=PVH",
            "pref.include_in_backups=true",
        ] {
            let w = one(line).unwrap_err();
            assert!(w.contains("settings line 2 ignored"), "{line}: {w}");
        }
        let long = format!("pref.kernel={}", "k".repeat(65));
        assert!(one(&long).unwrap_err().contains("invalid value"));
        let max = format!("pref.kernel={}", "k".repeat(64));
        assert_eq!(one(&max).unwrap().pref("kernel"), Some(&max[12..]));
        assert_eq!(
            check_pref("template", Kind::Qube, "dom0"),
            Ok(()),
            "dom0 is refused only as netvm"
        );
    }

    #[test]
    fn feature_names_and_values_are_bounded() {
        let name64 = "n".repeat(64);
        let value256 = "v".repeat(256);
        assert_eq!(check_feature(&name64, &value256), Ok(()));
        assert_eq!(check_feature("a", ""), Ok(()));
        assert_eq!(check_feature("a", " ~"), Ok(()));
        assert_eq!(check_feature("", "1"), Err("invalid feature name"));
        assert_eq!(
            check_feature(&"n".repeat(65), "1"),
            Err("invalid feature name")
        );
        assert_eq!(
            check_feature("a", &"v".repeat(257)),
            Err("invalid feature value")
        );
        assert_eq!(check_feature("a", "-v"), Err("invalid feature value"));
        assert_eq!(check_feature("a", "\u{7f}"), Err("invalid feature value"));
        assert_eq!(check_feature("a", "\u{e9}"), Err("invalid feature value"));
        let (s, w) = settings(&["feature.a=1", "feature.a=2"]);
        assert_eq!(s.features, vec![("a".to_string(), "1".to_string())]);
        assert!(w[0].contains("given twice"), "{w:?}");
    }

    #[test]
    fn tags_are_bounded_and_qubesd_tags_refused() {
        assert_eq!(check_tag(&"t".repeat(64)), Ok(()));
        assert_eq!(check_tag("a_b-C9"), Ok(()));
        assert_eq!(check_tag(&"t".repeat(65)), Err("invalid tag"));
        assert_eq!(check_tag(""), Err("invalid tag"));
        assert_eq!(check_tag("-t"), Err("invalid tag"));
        assert_eq!(check_tag("a.b"), Err("invalid tag"));
        assert_eq!(
            check_tag("created-by-x"),
            Err("set by qubesd, not restored")
        );
        let (s, w) = settings(&["tag=a", "tag=b", "tag=a"]);
        assert_eq!(s.tags, ["a", "b"]);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("settings line 4 ignored (given twice): tag=a"),
            "{w:?}"
        );
    }

    #[test]
    fn class_mode_and_size_are_read_once() {
        let (s, w) = settings(&[
            "class=TemplateVM",
            "mode=image",
            "private-size=17592186044416",
            "class=AppVM",
            "mode=files",
            "private-size=1",
        ]);
        assert_eq!(s.class.as_deref(), Some("TemplateVM"));
        assert_eq!(s.mode, Some(Mode::Image));
        assert_eq!(s.private_size, Some(MAX_SIZE));
        assert_eq!(w.len(), 3);
        assert!(w.iter().all(|x| x.contains("given twice")), "{w:?}");
        assert!(one("private-size=17592186044417")
            .unwrap_err()
            .contains("invalid size"));
        assert_eq!(
            one("class=StandaloneVM").unwrap().class.as_deref(),
            Some("StandaloneVM")
        );
        assert!(one("class=DispVM").unwrap_err().contains("unknown class"));
        assert!(one("mode=").unwrap_err().contains("unknown mode"));
    }

    #[test]
    fn properties_come_out_in_the_order_qvm_prefs_is_run_in() {
        let (s, w) = settings(&[
            "pref.label=red",
            "pref.netvm=",
            "pref.template=t",
            "pref.label=blue",
        ]);
        let keys: Vec<&str> = s.prefs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["template", "label", "netvm"]);
        assert_eq!(s.pref("label"), Some("red"));
        assert!(
            w[0].contains("settings line 5 ignored (given twice)"),
            "{w:?}"
        );
    }

    #[test]
    fn empty_lines_are_skipped_silently() {
        let (s, w) = settings(&["", "tag=a", ""]);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(s.tags, ["a"]);
    }

    #[test]
    fn settings_of_16_kib_are_read_and_one_byte_more_refused() {
        let body = |len: usize| format!("{MAGIC}\ntag=a\n{}", "\n".repeat(len - MAGIC.len() - 7));
        assert_eq!(body(16 * 1024).len(), 16 * 1024);
        let (s, w) = parse(&body(16 * 1024)).unwrap();
        assert_eq!((s.tags.len(), w.len()), (1, 1), "{w:?}");
        assert!(w[0].contains("more than 256 lines"));
        assert!(parse(&body(16 * 1024 + 1)).unwrap_err().contains("larger"));
    }

    #[test]
    fn line_256_is_read_and_line_257_is_not() {
        let text = |n: usize| {
            let mut l = vec![MAGIC.to_string()];
            l.extend((2..=n).map(|i| format!("tag=t{i}")));
            l.join("\n")
        };
        let (s, w) = parse(&text(MAX_LINES)).unwrap();
        assert_eq!((s.tags.len(), w.len()), (MAX_LINES - 1, 0));
        assert_eq!(s.tags.last().map(String::as_str), Some("t256"));
        let (s, w) = parse(&text(MAX_LINES + 1)).unwrap();
        assert_eq!(s.tags.len(), MAX_LINES - 1);
        assert_eq!(w, ["settings: more than 256 lines, the rest ignored"]);
    }

    #[test]
    fn render_leaves_out_what_would_not_parse_back() {
        let s = Settings {
            class: Some("AdminVM".into()),
            mode: None,
            private_size: Some(MAX_SIZE + 1),
            prefs: vec![
                ("label".into(), "hotpink".into()),
                ("qrexec_timeout".into(), "5".into()),
                ("vcpus".into(), "2".into()),
            ],
            features: vec![("a b".into(), "1".into()), ("ok".into(), "1".into())],
            tags: vec!["created-by-dom0".into(), "t".into()],
        };
        assert_eq!(
            render(&s),
            format!("{MAGIC}\npref.vcpus=2\nfeature.ok=1\ntag=t")
        );
        let s = Settings {
            private_size: Some(MAX_SIZE),
            class: Some("TemplateVM".into()),
            ..Settings::default()
        };
        assert_eq!(
            render(&s),
            format!("{MAGIC}\nclass=TemplateVM\nprivate-size={MAX_SIZE}")
        );
        let many = Settings {
            tags: (0..300).map(|i| format!("t{i}")).collect(),
            ..Settings::default()
        };
        let text = render(&many);
        assert_eq!(text.lines().count(), MAX_LINES);
        assert!(parse(&text).unwrap().1.is_empty());
    }

    #[test]
    fn warnings_show_at_most_60_bytes_of_the_line() {
        let line = format!("unknown={}", "x".repeat(100));
        let w = one(&line).unwrap_err();
        assert_eq!(
            w,
            format!("settings line 2 ignored (unknown key): {}...", &line[..60])
        );
    }

    #[test]
    fn qvm_prefs_listing_reads_set_values_and_unset_qube_properties() {
        let (class, p) = from_qvm_prefs(
            "klass -\nnetvm  -  None\ntemplate  -  None\nkernel  -\nlabel  -  -  x\nvcpus D  2\n",
        );
        assert_eq!(class.as_deref(), Some(""));
        assert_eq!(
            p,
            vec![
                ("netvm".to_string(), "".to_string()),
                ("template".to_string(), "".to_string()),
                ("kernel".to_string(), "".to_string()),
                ("label".to_string(), "-  x".to_string()),
            ]
        );
        let (_, p) = from_qvm_prefs("kernel  -  None\n");
        assert_eq!(p, vec![("kernel".to_string(), "None".to_string())]);
        assert_eq!(
            from_qvm_features("\n a 1\nb\n"),
            vec![("b".to_string(), "".to_string())]
        );
    }

    /// Runs `gather` for qube `work` against a fake answering the three listing calls.
    fn gather_with(prefs: Reply, features: Reply, tags: Reply) -> (Vec<String>, String) {
        let mut fake = Fake::default();
        fake.expect("qvm-prefs work", prefs)
            .expect("qvm-features work", features)
            .expect("qvm-tags work list", tags);
        let cfg =
            crate::dom0::config::parse(std::path::Path::new("/c"), b"repository = ssh://b/./r\n")
                .unwrap();
        let mut err = Vec::new();
        let mut ctx = crate::dom0::session::Ctx {
            q: &mut fake,
            cfg: &cfg,
            err: &mut err,
            display: crate::dom0::display::Display::new(false),
        };
        let lines = gather(&mut ctx, "work", Mode::Image, Some(1024));
        assert!(fake.expected.is_empty());
        (lines, String::from_utf8(err).unwrap())
    }

    #[test]
    fn gather_saves_prefs_features_and_tags_as_setting_lines() {
        let (lines, notes) = gather_with(
            Reply::ok("klass  -  AppVM\nlabel  -  red\nmemory  D  400\n"),
            Reply::ok("service.cups  1\n"),
            Reply::ok("work-stuff\ncreated-by-dom0\n"),
        );
        assert_eq!(
            lines,
            [
                MAGIC,
                "class=AppVM",
                "mode=image",
                "private-size=1024",
                "pref.label=red",
                "feature.service.cups=1",
                "tag=work-stuff"
            ]
        );
        assert_eq!(notes, "");
    }

    #[test]
    fn gather_notes_each_failed_listing_and_goes_on() {
        let (lines, notes) = gather_with(
            Reply::fail(1, "no such qube"),
            Reply::fail(1, "no"),
            Reply::fail(1, "no"),
        );
        assert_eq!(lines, [MAGIC, "mode=image", "private-size=1024"]);
        for part in ["settings", "features", "tags"] {
            assert!(
                notes.contains(&format!("work: {part} not saved")),
                "{notes}"
            );
        }
    }

    #[test]
    fn gather_keeps_settings_up_to_the_job_requests_bound_exactly() {
        // The magic, mode and size lines take 51 bytes with their newlines; 62 features of
        // 263 bytes and one of 27 fill MAX_SETTINGS_BYTES exactly; the last one does not fit.
        let mut features: String = (0..62)
            .map(|i| format!("f{i:02}  {}\n", "v".repeat(250)))
            .collect();
        features += &format!("f62  {}\nf63  v\n", "v".repeat(14));
        let (lines, notes) = gather_with(Reply::ok(""), Reply::ok(&features), Reply::ok(""));
        let total: usize = lines.iter().map(|l| l.len() + 1).sum();
        assert_eq!(total, 16 * 1024);
        assert_eq!(lines.last().map(|l| &l[..12]), Some("feature.f62="));
        assert!(
            notes.contains("work: settings too long, the rest not saved"),
            "{notes}"
        );
    }

    #[test]
    fn reads_qvm_prefs_and_qvm_features_listings() {
        let prefs = "include_in_backups  D  True\nklass               -  AppVM\nlabel               -  red\nmemory              D  400\nname                -  work\nnetvm               -  None\ntemplate            -  debian-12\nvcpus               U\n";
        let (class, p) = from_qvm_prefs(prefs);
        assert_eq!(class.as_deref(), Some("AppVM"));
        assert_eq!(
            p,
            vec![
                ("label".to_string(), "red".to_string()),
                ("netvm".to_string(), "".to_string()),
                ("template".to_string(), "debian-12".to_string())
            ]
        );
        let cur = current_prefs(prefs);
        assert_eq!(
            cur,
            vec![
                ("include_in_backups".to_string(), "True".to_string()),
                ("label".to_string(), "red".to_string()),
                ("memory".to_string(), "400".to_string()),
                ("netvm".to_string(), "".to_string()),
                ("template".to_string(), "debian-12".to_string())
            ]
        );
        let f = from_qvm_features("service.cups  1\nmenu-items    firefox.desktop xterm.desktop\n");
        assert_eq!(
            f[1],
            (
                "menu-items".to_string(),
                "firefox.desktop xterm.desktop".to_string()
            )
        );
    }
}
