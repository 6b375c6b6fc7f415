//! The crisis directory: locale -> country -> crisis-support resources, plus the supportive
//! user-facing message and the model guidance for each `CrisisKind`.
//!
//! Data comes from the embedded `directory.yaml` (or an override file with the same schema).
//! Low-confidence entries may appear in the file for reviewers but are dropped at load time and
//! never returned. This module does no I/O except `Directory::load_file`, and no network.

pub mod notifier;

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::domain::CrisisKind;

#[cfg(test)]
mod tests;

/// The embedded directory file.
const BUILTIN_YAML: &str = include_str!("directory.yaml");
/// Origin named in errors about the embedded file.
const BUILTIN_ORIGIN: &str = "builtin src/crisis/directory.yaml";

/// One crisis-support contact (a helpline, text line or directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// Display name of the service.
    pub name: String,
    /// Phone number as dialled domestically, or "" if none.
    pub phone: String,
    /// Text/SMS instructions (e.g. "Text HOME to 741741"), or "".
    pub sms: String,
    /// Web address, or "".
    pub url: String,
    /// Opening hours as stated by the source, or "" if unknown.
    pub hours: String,
    /// ISO 3166-1 alpha-2 country code, "" for international resources.
    pub country: String,
    /// Where the facts come from (a URL where the source gave one).
    pub source: String,
    /// How well the facts are sourced.
    pub confidence: Confidence,
}

/// How well an entry is sourced (the data file's scale).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// The organisation's own page or a government page.
    High,
    /// A reputable secondary source, or two or more agreeing sources.
    Medium,
    /// A single weak, conflicting or possibly outdated source: never returned by lookups.
    Low,
}

impl Confidence {
    /// Whether entries of this confidence may be shown to users (high or medium).
    pub fn is_usable(self) -> bool {
        !matches!(self, Confidence::Low)
    }
}

/// Everything needed to answer a crisis: what to say, how the model should behave, and whom to call.
#[derive(Clone, Copy, Debug)]
pub struct Support<'a> {
    /// Why support is attached.
    pub kind: CrisisKind,
    /// Short, warm message for the user (English).
    pub message: &'a str,
    /// Instructions for the model's reply.
    pub guidance: &'a str,
    /// The country the resources are for, `None` for the international fallback.
    pub country: Option<&'a str>,
    /// Usable resources, country first; never empty.
    pub resources: &'a [Resource],
}

/// Why a directory file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The file could not be read.
    #[error("{origin}: cannot read crisis directory: {error}")]
    Read {
        origin: String,
        error: std::io::Error,
    },
    /// The YAML is malformed or does not fit the schema; `message` names the field and position.
    #[error("{origin}: {message}")]
    Yaml {
        origin: String,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    /// A `countries` key is not an ISO 3166-1 alpha-2 code.
    #[error(
        "{origin}: countries: {code:?} is not a country code (need 2 uppercase letters, ISO 3166-1 alpha-2, e.g. \"GB\")"
    )]
    BadCountryCode { origin: String, code: String },
    /// An entry is incomplete (no name, no contact, or no source); `path` locates it.
    #[error("{origin}: {path}: {problem}")]
    BadEntry {
        origin: String,
        path: String,
        problem: String,
    },
    /// No high- or medium-confidence international fallback resource.
    #[error(
        "{origin}: fallback: needs at least one high- or medium-confidence international resource"
    )]
    NoFallback { origin: String },
}

/// The crisis directory: international fallback plus per-country resources (usable entries only).
#[derive(Clone, Debug)]
pub struct Directory {
    version: String,
    fallback: Vec<Resource>,
    countries: BTreeMap<String, Country>,
}

/// One country's usable data.
#[derive(Clone, Debug)]
struct Country {
    emergency: Option<String>,
    resources: Vec<Resource>,
}

impl Directory {
    /// The embedded directory; parse once at startup and share it.
    ///
    /// # Panics
    /// Only if the embedded `directory.yaml` is invalid, which the unit tests rule out.
    pub fn builtin() -> Directory {
        match Directory::from_yaml_str(BUILTIN_YAML, BUILTIN_ORIGIN) {
            Ok(directory) => directory,
            Err(error) => panic!("embedded crisis directory is invalid: {error}"),
        }
    }

    /// Parses and validates a directory; `origin` names the file in errors.
    pub fn from_yaml_str(yaml: &str, origin: &str) -> Result<Directory, DirectoryError> {
        let raw: RawDirectory = serde_yaml::from_str(yaml).map_err(|error| {
            let location = error.location();
            let mut message = error.to_string();
            if let Some(l) = &location
                && !message.contains(" at line ")
            {
                message = format!("{message} at line {} column {}", l.line(), l.column());
            }
            DirectoryError::Yaml {
                origin: origin.to_owned(),
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
                message,
            }
        })?;

        let fallback = usable_resources(raw.fallback, "", "fallback", origin)?;
        if fallback.is_empty() {
            return Err(DirectoryError::NoFallback {
                origin: origin.to_owned(),
            });
        }

        let mut countries = BTreeMap::new();
        for (code, raw_country) in raw.countries {
            if !is_country_code(&code) {
                return Err(DirectoryError::BadCountryCode {
                    origin: origin.to_owned(),
                    code,
                });
            }
            let emergency = match raw_country.emergency {
                Some(e) => {
                    let path = format!("countries.{code}.emergency");
                    check_entry(origin, &path, "number", &e.number, &e.source, e.confidence)?;
                    e.confidence.is_usable().then_some(e.number)
                }
                None => None,
            };
            let path = format!("countries.{code}.resources");
            let resources = usable_resources(raw_country.resources, &code, &path, origin)?;
            countries.insert(
                code,
                Country {
                    emergency,
                    resources,
                },
            );
        }

        Ok(Directory {
            version: raw.version,
            fallback,
            countries,
        })
    }

    /// Reads and validates an override file with the embedded file's schema.
    pub fn load_file(path: &Path) -> Result<Directory, DirectoryError> {
        let origin = path.display().to_string();
        let yaml = std::fs::read_to_string(path).map_err(|error| DirectoryError::Read {
            origin: origin.clone(),
            error,
        })?;
        Directory::from_yaml_str(&yaml, &origin)
    }

    /// The country (with usable resources) that a BCP-47 locale maps to, if any.
    pub fn country_for_locale(&self, locale: &str) -> Option<&str> {
        self.lookup(locale).map(|(code, _)| code)
    }

    /// The locale's country and its usable resources, or `(None, fallback)`.
    pub fn resources(&self, locale: &str) -> (Option<&str>, &[Resource]) {
        match self.lookup(locale) {
            Some((code, country)) => (Some(code), &country.resources),
            None => (None, &self.fallback),
        }
    }

    /// Message, guidance and resources for a crisis of `kind` in `locale`.
    pub fn support(&self, kind: CrisisKind, locale: &str) -> Support<'_> {
        let (country, resources) = self.resources(locale);
        Support {
            kind,
            message: message(kind),
            guidance: guidance(kind),
            country,
            resources,
        }
    }

    /// The number of countries with at least one usable resource.
    pub fn country_count(&self) -> usize {
        self.countries
            .values()
            .filter(|c| !c.resources.is_empty())
            .count()
    }

    /// The data version (e.g. "2026-11").
    pub fn version(&self) -> &str {
        &self.version
    }

    /// A country's emergency number (high/medium confidence only), by ISO code.
    pub fn emergency(&self, country: &str) -> Option<&str> {
        self.countries.get(country)?.emergency.as_deref()
    }

    /// The country for `locale` if the directory has usable resources for it.
    fn lookup(&self, locale: &str) -> Option<(&str, &Country)> {
        let code = locale_country(locale)?;
        let (code, country) = self.countries.get_key_value(code.as_str())?;
        (!country.resources.is_empty()).then_some((code.as_str(), country))
    }
}

/// The user-facing message for a crisis kind (English, safe-messaging compliant).
pub fn message(kind: CrisisKind) -> &'static str {
    match kind {
        CrisisKind::SelfHarm => SELF_HARM_MESSAGE,
        CrisisKind::HarmToOthers => HARM_TO_OTHERS_MESSAGE,
        CrisisKind::ThirdParty => THIRD_PARTY_MESSAGE,
    }
}

/// The model guidance for a crisis kind.
pub fn guidance(kind: CrisisKind) -> &'static str {
    match kind {
        CrisisKind::SelfHarm => SELF_HARM_GUIDANCE,
        CrisisKind::HarmToOthers => HARM_TO_OTHERS_GUIDANCE,
        CrisisKind::ThirdParty => THIRD_PARTY_GUIDANCE,
    }
}

const SELF_HARM_MESSAGE: &str = "I'm really glad you told me, and I'm sorry you're going through \
this. You don't have to face it alone: trained people are there to listen and support you, and \
you can reach them with the contacts below. If you are in immediate danger, please call your \
local emergency number now.";

const HARM_TO_OTHERS_MESSAGE: &str = "It sounds like you're dealing with a lot right now, and \
feelings this strong can be overwhelming. You don't have to handle this alone: the contacts below \
can help you talk it through. If anyone is in immediate danger, please call your local emergency \
number now.";

const THIRD_PARTY_MESSAGE: &str = "It's good that you're looking out for them, and supporting \
someone through a hard time can be a lot to carry. You can share the contacts below with them, \
and you can reach out to these services yourself too. If they are in immediate danger, please \
call your local emergency number now.";

const SELF_HARM_GUIDANCE: &str = "The user may be at risk of suicide or self-harm. Stay in the \
conversation: do not end it, refuse to talk, or change the subject. Respond warmly and without \
judgement, acknowledge their feelings and take them seriously. Gently ask whether they are safe \
right now. Encourage them to contact the crisis resources listed, and their local emergency number \
if they are in immediate danger. Never give information about methods, means, doses or lethality, \
or ways to hide self-harm, and do not describe suicide or self-harm in detail. Do not use \
sensational or graphic language, and never present suicide as a solution.";

const HARM_TO_OTHERS_GUIDANCE: &str = "The user may intend to harm another person. Stay calm and \
engaged: do not end the conversation, lecture, or threaten. De-escalate: acknowledge the feelings \
behind what they said, slow things down, and suggest stepping away from the situation. Do not \
provide any help, information or planning that could be used to harm anyone. If anyone may be in \
immediate danger, urge them to contact local emergency services now. Encourage them to talk to \
the support resources listed.";

const THIRD_PARTY_GUIDANCE: &str = "The user is worried about someone else who may be at risk; \
treat the user as a supporter, not as someone in danger. Help them support the other person: \
listen, suggest asking the person calmly and directly about their safety, stay with them if \
possible, and encourage them to contact the resources listed, which the user can share. If the \
danger seems imminent, tell the user to contact local emergency services now. Never give \
information about methods or means. Acknowledge that supporting someone is hard and that the user \
can contact these services for themselves too.";

/// Whether `code` looks like an ISO 3166-1 alpha-2 code (two uppercase ASCII letters).
fn is_country_code(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// Checks that an entry has its `field` (name or number) and, if usable, a source.
fn check_entry(
    origin: &str,
    path: &str,
    field: &str,
    value: &str,
    source: &str,
    confidence: Confidence,
) -> Result<(), DirectoryError> {
    let problem = if value.trim().is_empty() {
        format!("entry has no {field}")
    } else if confidence.is_usable() && source.trim().is_empty() {
        format!("{value:?} has high or medium confidence but no source")
    } else {
        return Ok(());
    };
    Err(DirectoryError::BadEntry {
        origin: origin.to_owned(),
        path: path.to_owned(),
        problem,
    })
}

/// Validates every resource at `path` and keeps the usable ones, tagged with `country`.
fn usable_resources(
    raw: Vec<RawResource>,
    country: &str,
    path: &str,
    origin: &str,
) -> Result<Vec<Resource>, DirectoryError> {
    let mut usable = Vec::with_capacity(raw.len());
    for (index, r) in raw.into_iter().enumerate() {
        let path = format!("{path}[{index}]");
        check_entry(origin, &path, "name", &r.name, &r.source, r.confidence)?;
        if [&r.phone, &r.sms, &r.url]
            .iter()
            .all(|s| s.trim().is_empty())
        {
            return Err(DirectoryError::BadEntry {
                origin: origin.to_owned(),
                path,
                problem: format!(
                    "resource {:?} needs at least one of phone, sms or url",
                    r.name
                ),
            });
        }
        if r.confidence.is_usable() {
            usable.push(Resource {
                name: r.name,
                phone: r.phone,
                sms: r.sms,
                url: r.url,
                hours: r.hours,
                country: country.to_owned(),
                source: r.source,
                confidence: r.confidence,
            });
        }
    }
    Ok(usable)
}

/// The ISO country code a BCP-47 locale points at, or `None` for the international fallback.
///
/// Case-insensitive; `_` works as a separator and POSIX suffixes (`.UTF-8`, `@euro`) are ignored.
/// An alphabetic region decides (`en-GB`, `zh-Hant-TW`), known to the directory or not; a numeric
/// region (`es-419`) or none falls back to the language's default country.
fn locale_country(locale: &str) -> Option<String> {
    let tag = locale.trim().split(['.', '@']).next().unwrap_or_default();
    let mut subtags = tag.split(['-', '_']);
    let language = subtags.next().unwrap_or_default().to_ascii_lowercase();
    if !(2..=3).contains(&language.len()) || !language.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    for subtag in subtags {
        let alphabetic = subtag.bytes().all(|b| b.is_ascii_alphabetic());
        match subtag.len() {
            2 if alphabetic => return Some(subtag.to_ascii_uppercase()),
            3 if subtag.bytes().all(|b| b.is_ascii_digit()) => break,
            3 | 4 if alphabetic => continue, // extended language or script subtag
            _ => break,                      // variant, extension, private use or garbage
        }
    }
    language_country(&language).map(str::to_owned)
}

/// Default country for a bare language subtag.
///
/// Only languages whose speakers live predominantly in one country covered by the data file are
/// mapped. Languages spread over several countries (en, es, pt, ar, zh, ru, sw, ta, ...) map to
/// nothing, so they get the international fallback rather than another country's helplines.
/// A mapped country without usable resources (da -> DK, tr -> TR) also ends at the fallback.
fn language_country(language: &str) -> Option<&'static str> {
    Some(match language {
        "de" => "DE",
        "fr" => "FR",
        "it" => "IT",
        "nl" => "NL",
        "pl" => "PL",
        "ja" => "JP",
        "ko" => "KR",
        "sv" => "SE",
        "no" | "nb" | "nn" => "NO",
        "da" => "DK",
        "fi" => "FI",
        "he" | "iw" => "IL",
        "uk" => "UA",
        "tr" => "TR",
        "hi" => "IN",
        "fil" | "tl" => "PH",
        "mi" => "NZ",
        "ga" => "IE",
        "cy" | "gd" => "GB",
        "ca" | "eu" | "gl" => "ES",
        "af" | "zu" | "xh" => "ZA",
        _ => return None,
    })
}

/// The file as written; validated and filtered into `Directory`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirectory {
    version: String,
    fallback: Vec<RawResource>,
    #[serde(deserialize_with = "unique_keys")]
    countries: BTreeMap<String, RawCountry>,
}

/// One country as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCountry {
    #[serde(default)]
    emergency: Option<RawEmergency>,
    #[serde(default)]
    resources: Vec<RawResource>,
}

/// An emergency number as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmergency {
    number: String,
    #[serde(default)]
    source: String,
    confidence: Confidence,
    #[serde(default, rename = "notes")]
    _notes: String,
}

/// A resource as written; `source_date` and `notes` are for reviewers only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    #[serde(default)]
    name: String,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    sms: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    hours: String,
    #[serde(default)]
    source: String,
    confidence: Confidence,
    #[serde(default, rename = "source_date")]
    _source_date: String,
    #[serde(default, rename = "notes")]
    _notes: String,
}

/// Deserializes a map, rejecting duplicate keys (serde's `BTreeMap` keeps the last silently).
fn unique_keys<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct UniqueKeys<V>(PhantomData<V>);

    impl<'de, V: Deserialize<'de>> Visitor<'de> for UniqueKeys<V> {
        type Value = BTreeMap<String, V>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of country codes")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(de::Error::custom(format_args!("duplicate country {key:?}")));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_map(UniqueKeys(PhantomData))
}
