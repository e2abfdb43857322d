//! Scenario files: several provider messages played in order, later ones referring to what
//! earlier ones generated.
//!
//! ```toml
//! name = "A Razorpay invoice paid in two parts"
//!
//! [[step]]
//! name = "first"
//! provider = "razorpay"
//! event = "invoice.partially_paid"
//!
//! [[step]]
//! name = "second"
//! provider = "razorpay"
//! event = "invoice.paid"
//! delay = "200ms"                      # wait before sending
//! repeat = 2                           # send the same bytes twice (a redelivery)
//! expect = 202                         # the status the step must get
//! [step.set]                           # overrides, applied in order
//! "payload.invoice.entity.id" = "${first.payload.invoice.entity.id}"
//! ```
//!
//! A value that is exactly one `${step.path}` takes the referenced JSON value with its type; a
//! longer string has each reference replaced by the referenced value's text. This module builds
//! the messages; sending them is the caller's.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::emulate::{EmulateError, GenerateOptions, Generated, Override, lookup};
use crate::registry;

/// A scenario as written in its file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "step")]
    pub steps: Vec<Step>,
}

/// One message of a scenario: a new one (`provider` and `event`), or an earlier step's message
/// sent again byte for byte (`resend`, its credential issued anew), as a provider redelivers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// How later steps refer to this one.
    pub name: String,
    #[serde(default)]
    pub provider: String,
    #[serde(default)]
    pub event: String,
    /// The name of an earlier step whose exact message this step sends again.
    #[serde(default)]
    pub resend: Option<String>,
    #[serde(default)]
    pub variant: Option<String>,
    /// The billhook source to post to (default: the first source of the step's provider).
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub sandbox: bool,
    /// `json.path = value` overrides; values may refer to earlier steps. In TOML, a key
    /// without a dot whose value is a table stands for the paths in it ([`dotted_paths`]).
    #[serde(default)]
    pub set: BTreeMap<String, Value>,
    /// A wait before the step is sent (`200ms`, `2s`).
    #[serde(default)]
    pub delay: Option<String>,
    /// How many times the same message is sent; every send after the first is a redelivery and
    /// must be recognised as a duplicate.
    #[serde(default = "once")]
    pub repeat: u32,
    /// The status every send must get; unset, the provider's acknowledgement (any 2xx, only a
    /// 200 for Zwitch, within 5 s for Razorpay and Zwitch).
    #[serde(default)]
    pub expect: Option<u16>,
    /// Whether billhook must report the first send as a duplicate (a `resend` step defaults to
    /// true, others to false).
    #[serde(default)]
    pub expect_duplicate: Option<bool>,
    /// Whether billhook must quarantine the message (verified, but not understood); a step
    /// whose message billhook quarantines fails unless it says so.
    #[serde(default)]
    pub expect_quarantined: bool,
}

fn once() -> u32 {
    1
}

/// A TOML `set` with each key that has no dot and a non-empty table for its value replaced by
/// the dotted paths of what the table holds: TOML reads an unquoted dotted key
/// (`data.object.id = "x"`) as nested tables, and it means that one field, not all of `data`.
/// A quoted dotted key keeps its table whole.
fn dotted_paths(written: BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    fn flatten(path: String, value: Value, into: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(fields) if !fields.is_empty() => {
                for (key, value) in fields {
                    flatten(format!("{path}.{key}"), value, into);
                }
            }
            value => {
                into.insert(path, value);
            }
        }
    }
    let mut paths = BTreeMap::new();
    for (key, value) in written {
        if key.contains('.') {
            paths.insert(key, value);
        } else {
            flatten(key, value, &mut paths);
        }
    }
    paths
}

/// Why a scenario cannot be played.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    #[error("the scenario file is not valid: {0}")]
    Parse(String),
    #[error("the scenario has no steps")]
    Empty,
    #[error("two steps are named `{0}`")]
    DuplicateStep(String),
    #[error("step `{step}`: unknown provider `{provider}`")]
    UnknownProvider { step: String, provider: String },
    #[error("step `{step}`: `{reference}` refers to no earlier step")]
    UnknownReference { step: String, reference: String },
    #[error("step `{step}`: `{reference}` names no value in that step's message")]
    MissingValue { step: String, reference: String },
    #[error("step `{step}`: {message}")]
    BadStep { step: String, message: String },
    #[error("step `{step}`: {source}")]
    Emulate {
        step: String,
        #[source]
        source: EmulateError,
    },
}

/// Why a value in a TOML scenario's `set` tables cannot be sent as written, if one cannot: a
/// float is read as an `f64`, which would send `12345678901234567.89` rounded, and a bare date
/// has no JSON form. The text as written is checked, as a JSON scenario's is.
fn unsendable_toml_value(text: &str) -> Option<String> {
    fn check(value: &toml_edit::Value) -> Option<String> {
        match value {
            toml_edit::Value::Float(float) => {
                let written = float
                    .as_repr()
                    .and_then(|repr| repr.as_raw().as_str())
                    .map_or_else(|| float.value().to_string(), |raw| raw.replace('_', ""));
                (!float.value().is_finite() || crate::emulate::inexact_number(&written).is_some())
                    .then(|| {
                        format!(
                            "`{written}` cannot be sent digit for digit as a JSON number; quote it to send it as a string"
                        )
                    })
            }
            toml_edit::Value::Datetime(datetime) => Some(format!(
                "`{}` is a TOML date or time, which JSON has no form for; quote it to send it as a string",
                datetime.value()
            )),
            toml_edit::Value::Array(array) => array.iter().find_map(check),
            toml_edit::Value::InlineTable(table) => table.iter().find_map(|(_, v)| check(v)),
            _ => None,
        }
    }
    fn check_item(item: &toml_edit::Item) -> Option<String> {
        match item {
            toml_edit::Item::Value(value) => check(value),
            toml_edit::Item::Table(table) => table.iter().find_map(|(_, item)| check_item(item)),
            toml_edit::Item::ArrayOfTables(tables) => tables
                .iter()
                .find_map(|table| table.iter().find_map(|(_, item)| check_item(item))),
            toml_edit::Item::None => None,
        }
    }
    let document = text.parse::<toml_edit::DocumentMut>().ok()?;
    // Steps as `[[step]]` tables, or inline: `step = [{ …, set = { … } }]`.
    match document.get("step")? {
        toml_edit::Item::ArrayOfTables(steps) => steps
            .iter()
            .filter_map(|step| step.get("set"))
            .find_map(check_item),
        toml_edit::Item::Value(toml_edit::Value::Array(steps)) => steps
            .iter()
            .filter_map(|step| step.as_inline_table()?.get("set"))
            .find_map(check),
        _ => None,
    }
}

impl Scenario {
    /// Parses a scenario from TOML, or from JSON when `json` is set.
    pub fn parse(text: &str, json: bool) -> Result<Self, ScenarioError> {
        let scenario: Scenario = if json {
            let scenario =
                serde_json::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
            if let Some(number) = crate::emulate::inexact_number(text) {
                return Err(ScenarioError::Parse(format!(
                    "`{number}` cannot be sent digit for digit as a JSON number; quote it to send it as a string"
                )));
            }
            scenario
        } else {
            let mut scenario: Scenario =
                toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
            if let Some(refused) = unsendable_toml_value(text) {
                return Err(ScenarioError::Parse(refused));
            }
            for step in &mut scenario.steps {
                step.set = dotted_paths(std::mem::take(&mut step.set));
            }
            scenario
        };
        scenario.check()?;
        Ok(scenario)
    }

    fn check(&self) -> Result<(), ScenarioError> {
        if self.steps.is_empty() {
            return Err(ScenarioError::Empty);
        }
        let mut names = std::collections::HashSet::new();
        for step in &self.steps {
            if let Some(earlier) = &step.resend {
                if !names.contains(earlier.as_str()) {
                    return Err(ScenarioError::UnknownReference {
                        step: step.name.clone(),
                        reference: earlier.clone(),
                    });
                }
                if !step.provider.is_empty()
                    || !step.event.is_empty()
                    || !step.set.is_empty()
                    || step.variant.is_some()
                    || step.source.is_some()
                    || step.sandbox
                {
                    return Err(ScenarioError::BadStep {
                        step: step.name.clone(),
                        message: "a resend step sends an earlier message as it was, to where it went: no provider, event, variant, sandbox, source or set".to_owned(),
                    });
                }
            }
            // Every `${step.…}` names an earlier step: a scenario that cannot finish is refused
            // before its first message is sent.
            for value in step.set.values() {
                if let Some(reference) = references(value)
                    .into_iter()
                    .find(|name| !names.contains(name))
                {
                    return Err(ScenarioError::UnknownReference {
                        step: step.name.clone(),
                        reference: reference.to_owned(),
                    });
                }
            }
            if !names.insert(step.name.as_str()) {
                return Err(ScenarioError::DuplicateStep(step.name.clone()));
            }
            if step.resend.is_none() {
                let provider = registry::by_name(&step.provider).ok_or_else(|| {
                    ScenarioError::UnknownProvider {
                        step: step.name.clone(),
                        provider: step.provider.clone(),
                    }
                })?;
                let event = crate::emulate::find_event(
                    provider.name(),
                    provider.emulated_events(),
                    &step.event,
                )
                .map_err(|source| ScenarioError::Emulate {
                    step: step.name.clone(),
                    source,
                })?;
                crate::emulate::find_variant(event, step.variant.as_deref()).map_err(|source| {
                    ScenarioError::Emulate {
                        step: step.name.clone(),
                        source,
                    }
                })?;
            }
            if step.repeat == 0 {
                return Err(ScenarioError::BadStep {
                    step: step.name.clone(),
                    message: "repeat must be at least 1".to_owned(),
                });
            }
            step.delay()?;
        }
        Ok(())
    }
}

impl Step {
    /// Whether the first send must be reported as a duplicate.
    pub fn expects_duplicate(&self) -> bool {
        self.expect_duplicate.unwrap_or(self.resend.is_some())
    }

    /// The wait before this step.
    pub fn delay(&self) -> Result<Duration, ScenarioError> {
        self.delay
            .as_deref()
            .map(billhook_core::time::parse_duration)
            .transpose()
            .map(Option::unwrap_or_default)
            .map_err(|message| ScenarioError::BadStep {
                step: self.name.clone(),
                message: format!("delay: {message}"),
            })
    }

    /// Builds this step's message, resolving references against the messages of `earlier`
    /// steps (by step name).
    pub fn build(
        &self,
        earlier: &HashMap<String, Value>,
        options: &mut GenerateOptions,
    ) -> Result<Generated, ScenarioError> {
        let provider =
            registry::by_name(&self.provider).ok_or_else(|| ScenarioError::UnknownProvider {
                step: self.name.clone(),
                provider: self.provider.clone(),
            })?;
        options.variant.clone_from(&self.variant);
        options.sandbox = self.sandbox;
        let emulate = |source| ScenarioError::Emulate {
            step: self.name.clone(),
            source,
        };
        let mut generated = provider.generate(&self.event, options).map_err(emulate)?;
        for (path, value) in &self.set {
            let value = resolve(value, earlier, &self.name)?;
            Override {
                path: path.clone(),
                value,
            }
            .apply(&mut generated.json)
            .map_err(emulate)?;
        }
        Ok(generated)
    }
}

/// The steps a value's `${step.path}` references name, in its strings at any depth.
fn references(value: &Value) -> Vec<&str> {
    match value {
        Value::String(text) => text
            .split("${")
            .skip(1)
            .filter_map(|rest| {
                let reference = &rest[..rest.find('}')?];
                Some(
                    reference
                        .split_once('.')
                        .map_or(reference, |(name, _)| name),
                )
            })
            .collect(),
        Value::Array(items) => items.iter().flat_map(references).collect(),
        Value::Object(fields) => fields.values().flat_map(references).collect(),
        _ => Vec::new(),
    }
}

/// Replaces `${step.path}` references in a value with what earlier steps generated.
fn resolve(
    value: &Value,
    earlier: &HashMap<String, Value>,
    step: &str,
) -> Result<Value, ScenarioError> {
    let text = match value {
        Value::String(text) => text,
        Value::Array(items) => {
            return items
                .iter()
                .map(|item| resolve(item, earlier, step))
                .collect::<Result<_, _>>()
                .map(Value::Array);
        }
        Value::Object(fields) => {
            return fields
                .iter()
                .map(|(key, item)| Ok((key.clone(), resolve(item, earlier, step)?)))
                .collect::<Result<_, _>>()
                .map(Value::Object);
        }
        _ => return Ok(value.clone()),
    };
    let find = |reference: &str| -> Result<Value, ScenarioError> {
        let (name, path) = reference.split_once('.').unwrap_or((reference, ""));
        let message = earlier
            .get(name)
            .ok_or_else(|| ScenarioError::UnknownReference {
                step: step.to_owned(),
                reference: reference.to_owned(),
            })?;
        let found = if path.is_empty() {
            Some(message)
        } else {
            lookup(message, path)
        };
        found.cloned().ok_or_else(|| ScenarioError::MissingValue {
            step: step.to_owned(),
            reference: reference.to_owned(),
        })
    };
    // A whole reference takes the value with its type; `${a.b} {c}` only looks like one.
    if let Some(reference) = text.strip_prefix("${").and_then(|t| t.strip_suffix('}'))
        && !reference.contains("${")
        && !reference.contains('}')
    {
        return find(reference);
    }
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        match find(&after[..end])? {
            Value::String(s) => out.push_str(&s),
            other => out.push_str(&other.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use billhook_core::time::Timestamp;
    use serde_json::json;

    const TWO_STEPS: &str = r#"
name = "two"

[[step]]
name = "first"
provider = "razorpay"
event = "invoice.partially_paid"

[[step]]
name = "second"
provider = "razorpay"
event = "invoice.paid"
delay = "10ms"
[step.set]
"payload.invoice.entity.id" = "${first.payload.invoice.entity.id}"
"payload.invoice.entity.amount" = "${first.payload.invoice.entity.amount}"
"payload.invoice.entity.description" = "second half of ${first.payload.invoice.entity.id}"
"payload.invoice.entity.notes" = "${first.payload.invoice.entity.id} {paid in full}"
"#;

    /// The shipped two-payment scenario's messages describe one invoice: its dates do not move
    /// when a second boundary falls between the two steps, and the order counts two attempts.
    #[test]
    fn the_shipped_two_payment_scenario_keeps_one_invoice() {
        let text = include_str!("../../../scenarios/razorpay-invoice-two-partial-payments.toml");
        let scenario = Scenario::parse(text, false).unwrap();
        let start = Timestamp::parse_rfc3339("2026-01-01T00:00:00.950Z").unwrap();
        let mut options = GenerateOptions::new(start, Some(1));
        let first = scenario.steps[0]
            .build(&HashMap::new(), &mut options)
            .unwrap();
        options.now = start.add(scenario.steps[1].delay().unwrap());
        let earlier = HashMap::from([("first_half".to_owned(), first.json.clone())]);
        let second = scenario.steps[1].build(&earlier, &mut options).unwrap();
        let invoice = |message: &Generated| message.json["payload"]["invoice"]["entity"].clone();
        for field in ["date", "issued_at", "created_at", "expire_by"] {
            assert_eq!(invoice(&second)[field], invoice(&first)[field], "{field}");
        }
        let order = |message: &Generated| message.json["payload"]["order"]["entity"].clone();
        assert_eq!(order(&second)["created_at"], order(&first)["created_at"]);
        assert_eq!(order(&second)["attempts"], json!(2));
    }

    #[test]
    fn references_take_values_with_their_types() {
        let scenario = Scenario::parse(TWO_STEPS, false).unwrap();
        let mut options = GenerateOptions::new(Timestamp::now(), Some(3));
        let first = scenario.steps[0]
            .build(&HashMap::new(), &mut options)
            .unwrap();
        let earlier = HashMap::from([("first".to_owned(), first.json.clone())]);
        let second = scenario.steps[1].build(&earlier, &mut options).unwrap();
        let invoice = &second.json["payload"]["invoice"]["entity"];
        assert_eq!(
            invoice["id"],
            first.json["payload"]["invoice"]["entity"]["id"]
        );
        assert_eq!(
            invoice["amount"],
            first.json["payload"]["invoice"]["entity"]["amount"]
        );
        assert!(invoice["amount"].is_number());
        assert_eq!(
            invoice["description"],
            json!(format!(
                "second half of {}",
                invoice["id"].as_str().unwrap()
            ))
        );
        assert_eq!(
            invoice["notes"],
            json!(format!(
                "{} {{paid in full}}",
                invoice["id"].as_str().unwrap()
            ))
        );
        assert_eq!(
            scenario.steps[1].delay().unwrap(),
            Duration::from_millis(10)
        );
    }

    /// A JSON scenario's numbers are sent as written or not at all.
    #[test]
    fn a_json_scenario_with_a_number_a_message_cannot_carry_is_refused() {
        let exact = r#"{"name": "n", "step": [{"name": "a", "provider": "setu_bbps",
            "event": "BILL_FETCH", "set": {"data.bill.amount": 60500}}]}"#;
        Scenario::parse(exact, true).unwrap();
        let inexact = exact.replace("60500", "37492803268785177510");
        let refused = Scenario::parse(&inexact, true).unwrap_err().to_string();
        assert!(refused.contains("37492803268785177510"), "{refused}");
    }

    /// So are a TOML scenario's, which TOML itself would read as an `f64`; and a bare TOML date
    /// has no JSON form.
    #[test]
    fn a_toml_scenario_with_a_value_a_message_cannot_carry_is_refused() {
        let scenario = |value: &str| {
            format!(
                "name = \"n\"\n[[step]]\nname = \"a\"\nprovider = \"zwitch\"\n\
                 event = \"bharat_connect.invoice.create\"\n[step.set]\n\
                 \"data.object.value_details\" = {{ total_invoice_value = {value} }}\n"
            )
        };
        for exact in [
            "2500.75",
            "1_180.50",
            "60500",
            "\"12345678901234567.89\"",
            "-3.69",
        ] {
            Scenario::parse(&scenario(exact), false).unwrap_or_else(|e| panic!("{exact}: {e}"));
        }
        let inline = "name = \"n\"\nstep = [{ name = \"a\", provider = \"zwitch\", \
                      event = \"bharat_connect.invoice.create\", \
                      set = { \"data.object.x\" = 12345678901234567.89 } }]\n";
        let refused = Scenario::parse(inline, false).unwrap_err().to_string();
        assert!(refused.contains("12345678901234567.89"), "{refused}");
        for (unsendable, named) in [
            ("12345678901234567.89", "12345678901234567.89"),
            ("1.000_000_000_000_000_01", "1.00000000000000001"),
            ("inf", "inf"),
            ("2026-03-01T10:00:00Z", "2026-03-01T10:00:00Z"),
            ("[1, 0.12345678901234567]", "0.12345678901234567"),
        ] {
            let refused = Scenario::parse(&scenario(unsendable), false)
                .unwrap_err()
                .to_string();
            assert!(refused.contains(named), "{unsendable}: {refused}");
            assert!(refused.contains("quote it"), "{refused}");
        }
    }

    #[test]
    fn bad_scenarios_are_named() {
        assert!(matches!(
            Scenario::parse("name = \"x\"\nstep = []\n", false),
            Err(ScenarioError::Empty)
        ));
        // Found before anything is sent: a reference to no earlier step, an event or a
        // variant the emulator does not know, in the last step.
        let unknown = TWO_STEPS.replace("${first.", "${nobody.");
        assert!(matches!(
            Scenario::parse(&unknown, false),
            Err(ScenarioError::UnknownReference { reference, .. }) if reference == "nobody"
        ));
        let itself = TWO_STEPS.replace("${first.", "${second.");
        assert!(matches!(
            Scenario::parse(&itself, false),
            Err(ScenarioError::UnknownReference { .. })
        ));
        let no_such_event =
            TWO_STEPS.replace("event = \"invoice.paid\"", "event = \"invoice.lost\"");
        assert!(matches!(
            Scenario::parse(&no_such_event, false),
            Err(ScenarioError::Emulate {
                source: EmulateError::UnknownEvent { .. },
                ..
            })
        ));
        let no_such_variant = TWO_STEPS.replace(
            "event = \"invoice.paid\"",
            "event = \"invoice.paid\"\nvariant = \"cheque\"",
        );
        assert!(matches!(
            Scenario::parse(&no_such_variant, false),
            Err(ScenarioError::Emulate {
                source: EmulateError::UnknownVariant { .. },
                ..
            })
        ));
        let twice = TWO_STEPS.replace("name = \"second\"", "name = \"first\"");
        assert!(matches!(
            Scenario::parse(&twice, false),
            Err(ScenarioError::DuplicateStep(_))
        ));
        let stripe = TWO_STEPS.replace(
            "provider = \"razorpay\"\nevent = \"invoice.paid\"",
            "provider = \"stripe\"\nevent = \"invoice.paid\"",
        );
        assert!(matches!(
            Scenario::parse(&stripe, false),
            Err(ScenarioError::UnknownProvider { .. })
        ));
        let resend = format!("{TWO_STEPS}\n[[step]]\nname = \"again\"\nresend = \"first\"\n");
        let scenario = Scenario::parse(&resend, false).unwrap();
        assert!(scenario.steps[2].expects_duplicate());
        let forward = format!("{TWO_STEPS}\n[[step]]\nname = \"again\"\nresend = \"later\"\n");
        assert!(matches!(
            Scenario::parse(&forward, false),
            Err(ScenarioError::UnknownReference { .. })
        ));
        // A resend goes where its step went, as it was.
        for own in [
            "source = \"razorpay-2\"",
            "variant = \"x\"",
            "sandbox = true",
        ] {
            let resend =
                format!("{TWO_STEPS}\n[[step]]\nname = \"again\"\nresend = \"first\"\n{own}\n");
            assert!(
                matches!(
                    Scenario::parse(&resend, false),
                    Err(ScenarioError::BadStep { message, .. }) if message.contains("source")
                ),
                "{own}"
            );
        }
        // A reference inside a table's value is checked as one in a string is.
        let nested = TWO_STEPS.replace(
            "\"payload.invoice.entity.notes\" = \"${first.payload.invoice.entity.id} {paid in full}\"",
            "\"payload.invoice.entity.notes\" = { of = [\"${nobody.id}\"] }",
        );
        assert!(matches!(
            Scenario::parse(&nested, false),
            Err(ScenarioError::UnknownReference { reference, .. }) if reference == "nobody"
        ));
    }

    /// References are replaced in tables and arrays too, and an unquoted dotted key sets the
    /// one field it names (TOML reads it as nested tables); a quoted one replaces the object.
    #[test]
    fn references_inside_tables_resolve_and_unquoted_keys_set_one_field() {
        let text = r#"
name = "nested"

[[step]]
name = "first"
provider = "razorpay"
event = "invoice.partially_paid"

[[step]]
name = "second"
provider = "razorpay"
event = "invoice.paid"
[step.set]
payload.invoice.entity.id = "${first.payload.invoice.entity.id}"
"payload.invoice.entity.notes" = { of = ["${first.payload.invoice.entity.id}", 7], by = "${first.event}" }
"payload.payment.entity" = { id = "pay_whole" }
"#;
        let scenario = Scenario::parse(text, false).unwrap();
        let mut options = GenerateOptions::new(Timestamp::now(), Some(3));
        let first = scenario.steps[0]
            .build(&HashMap::new(), &mut options)
            .unwrap();
        let earlier = HashMap::from([("first".to_owned(), first.json.clone())]);
        let second = scenario.steps[1].build(&earlier, &mut options).unwrap();
        let first_id = &first.json["payload"]["invoice"]["entity"]["id"];
        let invoice = &second.json["payload"]["invoice"]["entity"];
        assert_eq!(&invoice["id"], first_id);
        assert!(
            invoice["amount"].is_i64(),
            "the rest of the invoice stays: {invoice}"
        );
        assert_eq!(
            invoice["notes"],
            json!({"of": [first_id, 7], "by": "invoice.partially_paid"})
        );
        assert_eq!(
            second.json["payload"]["payment"]["entity"],
            json!({"id": "pay_whole"})
        );
    }
}
