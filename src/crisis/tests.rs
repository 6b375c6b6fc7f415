//! Tests for the crisis directory: embedded data, locale resolution, validation errors, support.

use super::*;

/// A small valid directory; `{countries}` is spliced in under `countries:`.
fn mini(countries: &str) -> String {
    format!(
        "version: \"test\"\n\
         fallback:\n\
         \x20 - {{name: Intl, url: \"https://example.org\", source: src, confidence: high}}\n\
         countries:\n{countries}"
    )
}

fn parse(yaml: &str) -> Result<Directory, DirectoryError> {
    Directory::from_yaml_str(yaml, "test.yaml")
}

fn err(yaml: &str) -> String {
    match parse(yaml) {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

/// Every entry of the embedded file as written, with its confidence (including low ones).
fn raw_builtin() -> RawDirectory {
    serde_yaml::from_str(BUILTIN_YAML).expect("embedded file parses")
}

#[test]
fn embedded_directory_parses_and_covers_enough_countries() {
    let dir = Directory::from_yaml_str(BUILTIN_YAML, BUILTIN_ORIGIN).expect("embedded file valid");
    assert_eq!(dir.version(), "2026-11");
    let usable = dir.country_count();
    assert!(
        usable >= 25,
        "only {usable} countries with usable resources"
    );
    assert!(!dir.fallback.is_empty());
    // builtin() must agree with the checked parse.
    assert_eq!(Directory::builtin().country_count(), usable);
}

#[test]
fn every_returned_resource_is_sourced_and_usable() {
    let dir = Directory::builtin();
    let all = dir
        .countries
        .iter()
        .flat_map(|(code, c)| c.resources.iter().map(move |r| (code.as_str(), r)))
        .chain(dir.fallback.iter().map(|r| ("", r)));
    let mut n = 0;
    for (code, r) in all {
        n += 1;
        assert!(!r.source.trim().is_empty(), "{} has no source", r.name);
        assert!(r.confidence.is_usable(), "{} is low confidence", r.name);
        assert_eq!(r.country, code, "{} tagged with the wrong country", r.name);
        assert!(!r.name.trim().is_empty());
        assert!(!(r.phone.is_empty() && r.sms.is_empty() && r.url.is_empty()));
    }
    assert!(n > 50, "suspiciously few resources: {n}");
}

#[test]
fn low_confidence_entries_are_never_returned() {
    let raw = raw_builtin();
    let dir = Directory::builtin();
    let low: Vec<&str> = raw
        .countries
        .values()
        .flat_map(|c| &c.resources)
        .chain(&raw.fallback)
        .filter(|r| r.confidence == Confidence::Low)
        .map(|r| r.name.as_str())
        .collect();
    assert!(
        low.len() >= 10,
        "the file should keep its low entries for review"
    );

    let mut locales: Vec<String> = raw.countries.keys().map(|c| format!("und-{c}")).collect();
    locales.extend(["", "en", "xx-ZZ"].map(String::from));
    for locale in &locales {
        let (_, resources) = dir.resources(locale);
        assert!(!resources.is_empty(), "{locale}: no resources");
        for r in resources {
            assert_ne!(r.confidence, Confidence::Low, "{locale}: {}", r.name);
            assert!(!low.contains(&r.name.as_str()), "{locale}: {}", r.name);
        }
    }
    // Countries whose entries are all low fall back to the international list.
    for code in ["DK", "NG", "TR"] {
        assert_eq!(
            dir.resources(&format!("und-{code}")),
            (None, &dir.fallback[..])
        );
    }
    // A known low entry inside a usable country is filtered out.
    let (_, gb) = dir.resources("en-GB");
    assert!(gb.iter().all(|r| !r.name.starts_with("Papyrus")));
    assert!(gb.iter().any(|r| r.name == "Samaritans"));
}

#[test]
fn locales_resolve_to_countries_or_fallback() {
    let dir = Directory::builtin();
    let cases = [
        ("en-GB", Some("GB")),
        ("en_gb", Some("GB")),
        ("EN-gb", Some("GB")),
        (" en-GB ", Some("GB")),
        ("en_GB.UTF-8", Some("GB")),
        ("de", Some("DE")),
        ("de-AT", Some("AT")),
        ("fr-CA", Some("CA")),
        ("ja", Some("JP")),
        ("ko", Some("KR")),
        ("zh-Hant-TW", Some("TW")),
        ("zh-yue-HK", Some("HK")),
        ("pt-BR", Some("BR")),
        ("pt-PT", Some("PT")),
        ("nb", Some("NO")),
        ("de-150", Some("DE")),
        ("es-419", None),
        ("en", None),
        ("es", None),
        ("pt", None),
        ("zh", None),
        ("ar", None),
        ("zh-Hant", None),
        ("xx-ZZ", None),
        ("de-ZZ", None),
        ("en-DK", None),
        ("da", None),
        ("", None),
        ("   ", None),
        ("-", None),
        ("_GB", None),
        ("e", None),
        ("C", None),
        ("x-private", None),
        ("12-GB", None),
        ("日本語-JP", None),
        ("en-GB-oxendict", Some("GB")),
        ("en-x-GB", None),
    ];
    for (locale, want) in cases {
        assert_eq!(dir.country_for_locale(locale), want, "locale {locale:?}");
        let (country, resources) = dir.resources(locale);
        assert_eq!(country, want, "resources({locale:?})");
        match want {
            Some(code) => assert!(resources.iter().all(|r| r.country == code)),
            None => assert!(resources.iter().all(|r| r.country.is_empty())),
        }
        assert!(!resources.is_empty());
    }
}

#[test]
fn garbage_locales_never_panic() {
    let dir = Directory::builtin();
    let long = "a-".repeat(10_000);
    for locale in [
        long.as_str(),
        "\u{0}",
        "🙂-GB",
        "en-🙂",
        "--__--",
        "en-GB\u{301}",
        "@",
        ".",
    ] {
        let _ = dir.resources(locale);
    }
}

#[test]
fn emergency_numbers_are_exposed_only_when_sourced() {
    let dir = Directory::builtin();
    assert_eq!(dir.emergency("GB"), Some("999"));
    assert_eq!(dir.emergency("FI"), Some("112"));
    assert_eq!(
        dir.emergency("JP"),
        None,
        "marked low: unsourced in the data file"
    );
    assert_eq!(dir.emergency("ZZ"), None);
}

#[test]
fn syntax_and_type_errors_name_origin_field_and_line() {
    // Unclosed flow sequence.
    let e = parse(&mini("  GB: [\n")).expect_err("syntax error");
    assert!(
        matches!(e, DirectoryError::Yaml { line: Some(_), .. }),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.starts_with("test.yaml: "), "{msg}");
    assert!(msg.contains("line 5"), "{msg}");

    // Unterminated quoted string.
    let msg = err(&mini("  GB:\n    resources: [{name: \"a}]\n"));
    assert!(
        msg.starts_with("test.yaml: ") && msg.contains("line 6"),
        "{msg}"
    );

    // Wrong type for a field.
    let msg = err(&mini(
        "  GB:\n    resources:\n      - {name: [a], phone: \"1\", source: s, confidence: high}\n",
    ));
    assert!(msg.starts_with("test.yaml: "), "{msg}");
    assert!(msg.contains("countries.GB.resources[0].name"), "{msg}");
    assert!(msg.contains("line 7"), "{msg}");

    // Misspelt field and bad confidence value.
    let msg = err(&mini(
        "  GB:\n    resources:\n      - name: a\n        phnoe: \"1\"\n        confidence: high\n",
    ));
    assert!(msg.contains("phnoe") && msg.contains("line 8"), "{msg}");
    let msg = err(&mini(
        "  GB:\n    resources:\n      - {name: a, phone: \"1\", source: s, confidence: hgih}\n",
    ));
    assert!(msg.contains("confidence") && msg.contains("hgih"), "{msg}");
    assert!(msg.contains("line 7"), "{msg}");

    // Missing field, duplicate country.
    let msg = err("countries: {}\nfallback: []\n");
    assert_eq!(msg, "test.yaml: missing field `version` at line 1 column 1");
    let one = "    resources: [{name: a, phone: \"1\", source: s, confidence: high}]\n";
    let msg = err(&mini(&format!("  GB:\n{one}  GB:\n{one}")));
    assert!(msg.contains("duplicate country \"GB\""), "{msg}");
}

#[test]
fn validation_errors_are_clear() {
    let one = "    resources: [{name: a, phone: \"1\", source: s, confidence: high}]\n";
    for code in ["gb", "GBR", "G1", "", "Gb"] {
        let e = parse(&mini(&format!("  \"{code}\":\n{one}"))).expect_err(code);
        assert!(matches!(&e, DirectoryError::BadCountryCode { code: c, .. } if c == code));
        let msg = e.to_string();
        assert!(msg.starts_with("test.yaml: countries: "), "{msg}");
        assert!(msg.contains("not a country code"), "{msg}");
    }

    let msg = err(&mini(
        "  GB:\n    resources:\n      - {name: ok, phone: \"1\", source: s, confidence: high}\n      - {name: Nowhere, hours: 24/7, source: s, confidence: high}\n",
    ));
    assert_eq!(
        msg,
        "test.yaml: countries.GB.resources[1]: resource \"Nowhere\" needs at least one of phone, sms or url"
    );

    let msg = err(&mini(
        "  GB:\n    resources: [{phone: \"1\", source: s, confidence: high}]\n",
    ));
    assert_eq!(
        msg,
        "test.yaml: countries.GB.resources[0]: entry has no name"
    );

    let msg = err(&mini(
        "  GB:\n    resources: [{name: a, phone: \"1\", confidence: medium}]\n",
    ));
    assert!(
        msg.contains("resources[0]") && msg.contains("no source"),
        "{msg}"
    );

    // Fallback: empty, or only low-confidence entries.
    let msg = err("version: v\nfallback: []\ncountries: {}\n");
    assert!(msg.starts_with("test.yaml: fallback"), "{msg}");
    let msg = err(
        "version: v\nfallback: [{name: a, url: u, source: s, confidence: low}]\ncountries: {}\n",
    );
    assert!(msg.contains("fallback") && msg.contains("medium"), "{msg}");
    let msg =
        err("version: v\nfallback: [{name: a, source: s, confidence: high}]\ncountries: {}\n");
    assert!(
        msg.contains("fallback[0]") && msg.contains("phone, sms or url"),
        "{msg}"
    );
}

#[test]
fn low_entries_are_validated_but_not_counted() {
    let dir = parse(&mini(
        "  GB:\n    resources: [{name: a, phone: \"1\", source: s, confidence: high}]\n  \
         DK:\n    resources: [{name: b, phone: \"2\", confidence: low}]\n  \
         \"NO\":\n    emergency: {number: \"113\", source: s, confidence: medium}\n",
    ))
    .expect("valid");
    assert_eq!(dir.country_count(), 1);
    assert_eq!(dir.country_for_locale("da-DK"), None);
    assert_eq!(dir.country_for_locale("nb-NO"), None);
    assert_eq!(dir.emergency("NO"), Some("113"));
    let (country, resources) = dir.resources("da-DK");
    assert_eq!(country, None);
    assert_eq!(resources[0].name, "Intl");
}

#[test]
fn load_file_reads_overrides_and_names_the_path() {
    let path = std::env::temp_dir().join(format!("crisis-dir-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        mini("  GB:\n    resources: [{name: Local, phone: \"1\", source: s, confidence: high}]\n"),
    )
    .expect("write temp file");
    let dir = Directory::load_file(&path);
    std::fs::write(&path, "version: [\n").expect("write temp file");
    let broken = Directory::load_file(&path);
    let _ = std::fs::remove_file(&path);

    let dir = dir.expect("override loads");
    assert_eq!(dir.version(), "test");
    assert_eq!(dir.resources("en-GB").1[0].name, "Local");
    let msg = broken.expect_err("broken file").to_string();
    assert!(msg.starts_with(&path.display().to_string()), "{msg}");
    assert!(msg.contains("line"), "{msg}");

    let missing = std::env::temp_dir().join("crisis-dir-does-not-exist.yaml");
    let e = Directory::load_file(&missing).expect_err("missing file");
    assert!(matches!(e, DirectoryError::Read { .. }));
    assert!(
        e.to_string().contains("crisis-dir-does-not-exist.yaml"),
        "{e}"
    );
}

#[test]
fn support_is_complete_for_every_kind() {
    let dir = Directory::builtin();
    let kinds = [
        CrisisKind::SelfHarm,
        CrisisKind::HarmToOthers,
        CrisisKind::ThirdParty,
    ];
    for kind in kinds {
        for (locale, country) in [("en-GB", Some("GB")), ("ja-JP", Some("JP")), ("en", None)] {
            let s = dir.support(kind, locale);
            assert_eq!(s.kind, kind);
            assert_eq!(s.country, country);
            assert!(!s.resources.is_empty(), "{kind:?} {locale}");
            assert!(s.message.len() > 80, "{kind:?}: message too short");
            assert!(s.guidance.len() > 150, "{kind:?}: guidance too short");
            assert!(s.message.contains("emergency"), "{kind:?}: {}", s.message);
            assert!(s.guidance.contains("emergency"), "{kind:?}: {}", s.guidance);
        }
    }
    // Each kind has its own text.
    assert_ne!(message(kinds[0]), message(kinds[1]));
    assert_ne!(message(kinds[1]), message(kinds[2]));
    assert_ne!(guidance(kinds[0]), guidance(kinds[2]));
    // Guidance tells the model to stay engaged and never give method information.
    assert!(guidance(CrisisKind::SelfHarm).contains("do not end it"));
    assert!(guidance(CrisisKind::SelfHarm).contains("Never give information about methods"));
    assert!(guidance(CrisisKind::HarmToOthers).contains("Do not provide any help"));
    assert!(guidance(CrisisKind::ThirdParty).contains("not as someone in danger"));
}
