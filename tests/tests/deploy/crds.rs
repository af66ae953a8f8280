//! The ClientIPSessionPersistencePolicy CRD (`deploy/kubernetes/crds`): it validates against
//! the Kubernetes schemas, the example's policies pass its `openAPIV3Schema` (checked by a
//! plain JSON-schema validator, `crd_check.py`), and bad policies are refused naming the
//! field, just as the project's `sessionPersistence` parser refuses them. What only a CEL
//! rule can say (duration bounds, group and kind pairs, ...) must be in the CRD as one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use affinity_proto::{Policy, SessionPersistence};
use serde::Deserialize as _;
use serde_json::{Value, json};

use crate::manifests::{KUBERNETES_VERSION, kubernetes_validate};
use crate::{out_dir, root, skip};

const CRD: &str = "deploy/kubernetes/crds/clientipsessionpersistencepolicies.yaml";
const EXAMPLE: &str = "deploy/kubernetes/examples/client-ip-policy.yaml";
const KIND: &str = "ClientIPSessionPersistencePolicy";

fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(path)).expect("the file is there");
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn crd() -> Value {
    let mut docs = documents(CRD);
    assert_eq!(docs.len(), 1, "{CRD} holds one object");
    docs.remove(0)
}

fn schema(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

/// A python that can run `crd_check.py`: the one beside `kubernetes-validate` (its
/// virtualenv brings `jsonschema` and PyYAML), else the one its script starts with.
fn checker_python() -> Result<PathBuf, String> {
    let tool = kubernetes_validate().ok_or("kubernetes-validate is not installed")?;
    let beside = tool.with_file_name("python");
    let python = if beside.is_file() {
        beside
    } else {
        let script = std::fs::read_to_string(&tool).unwrap_or_default();
        let shebang = script.lines().next().and_then(|l| l.strip_prefix("#!"));
        PathBuf::from(
            shebang
                .ok_or("kubernetes-validate has no python beside it")?
                .trim(),
        )
    };
    let works = Command::new(&python)
        .args(["-c", "import jsonschema, yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        Ok(python)
    } else {
        Err(format!("{} has no jsonschema or yaml", python.display()))
    }
}

/// `crd_check.py` on `files`: the errors of each policy, by name.
fn check(python: &Path, files: &[PathBuf]) -> BTreeMap<String, Vec<String>> {
    let output = Command::new(python)
        .arg(root().join("tests/tests/deploy/crd_check.py"))
        .arg(root().join(CRD))
        .args(files)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "crd_check.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> =
        serde_json::from_slice(&output.stdout).expect("crd_check prints JSON");
    results
        .into_iter()
        .map(|r| {
            let errors = r["errors"]
                .as_array()
                .expect("errors")
                .iter()
                .map(|e| e.as_str().expect("an error is text").to_string())
                .collect();
            (r["name"].as_str().expect("a name").to_string(), errors)
        })
        .collect()
}

/// What the project's parser makes of a policy's spec, read as a route rule's
/// `sessionPersistence` block (the same fields, with `type: ClientIP`).
fn parse(spec: &Value) -> Result<Policy, String> {
    let mut block = spec.clone();
    let map = block.as_object_mut().expect("spec is an object");
    map.remove("targetRefs");
    map.insert("type".into(), json!("ClientIP"));
    let block: SessionPersistence = serde_json::from_value(block).map_err(|e| e.to_string())?;
    Policy::from_session_persistence(&block).map_err(|e| e.to_string())
}

#[test]
fn the_crd_defines_a_direct_gateway_api_policy() {
    let crd = crd();
    assert_eq!(crd["apiVersion"], "apiextensions.k8s.io/v1");
    assert_eq!(crd["kind"], "CustomResourceDefinition");
    let spec = &crd["spec"];
    let names = &spec["names"];
    assert_eq!(
        crd["metadata"]["name"],
        format!(
            "{}.{}",
            names["plural"].as_str().unwrap(),
            spec["group"].as_str().unwrap()
        )
    );
    assert_eq!(spec["group"], "affinity.dev");
    assert_eq!(spec["scope"], "Namespaced");
    assert_eq!(names["kind"], KIND);
    assert_eq!(names["plural"], "clientipsessionpersistencepolicies");
    assert_eq!(names["singular"], "clientipsessionpersistencepolicy");
    assert_eq!(names["categories"], json!(["gateway-api", "affinity"]));
    assert_eq!(
        crd["metadata"]["labels"]["gateway.networking.k8s.io/policy"], "Direct",
        "GEP-713 direct policy attachment"
    );
    let versions = spec["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1);
    let version = &versions[0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(
        (&version["served"], &version["storage"]),
        (&json!(true), &json!(true))
    );
    assert_eq!(version["subresources"]["status"], json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        columns.contains(&"Accepted") && columns.contains(&"Age"),
        "{columns:?}"
    );

    let schema = schema(&crd);
    assert_eq!(schema["required"], json!(["spec"]));
    let policy = &schema["properties"]["spec"];
    assert!(
        policy.get("x-kubernetes-preserve-unknown-fields").is_none(),
        "spec fields are known; others are pruned"
    );
    assert_eq!(policy["required"], json!(["targetRefs", "absoluteTimeout"]));
    let conditions = &schema["properties"]["status"]["properties"]["ancestors"]["items"]["properties"]
        ["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    assert_eq!(conditions["maxItems"], 8);
}

#[test]
fn the_crd_validates_against_the_kubernetes_schemas() {
    let test = "the_crd_validates_against_the_kubernetes_schemas";
    let Some(tool) = kubernetes_validate() else {
        skip(test, "kubernetes-validate is not installed");
        return;
    };
    let (passed, said) = crate::manifests::validate(&tool, &root().join(CRD));
    assert!(
        passed,
        "{CRD} does not validate against Kubernetes {KUBERNETES_VERSION}:\n{said}"
    );
    assert_eq!(
        said.matches(" passed for resource ").count(),
        documents(CRD).len(),
        "every object must be reported valid:\n{said}"
    );
}

#[test]
fn the_example_policies_pass_the_crd_schema_and_the_parser() {
    let test = "the_example_policies_pass_the_crd_schema_and_the_parser";
    let docs = documents(EXAMPLE);
    let policies: Vec<&Value> = docs.iter().filter(|d| d["kind"] == KIND).collect();
    assert_eq!(policies.len(), 2, "{EXAMPLE}: two policies");

    // The first targets the route's rule `api` by sectionName, the second a Service.
    let route = docs
        .iter()
        .find(|d| d["kind"] == "HTTPRoute")
        .expect("an HTTPRoute");
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(
        (&route["metadata"]["namespace"], &route["metadata"]["name"]),
        (&json!("shop"), &json!("web"))
    );
    let rules = route["spec"]["rules"].as_array().unwrap();
    let api = rules
        .iter()
        .find(|r| r["name"] == "api")
        .expect("a rule named api");
    assert!(
        api["backendRefs"][0]["name"].is_string(),
        "the rule sends to a Service"
    );
    let by_rule = &policies[0]["spec"];
    assert_eq!(policies[0]["metadata"]["namespace"], "shop");
    assert_eq!(
        by_rule["targetRefs"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web", "sectionName": "api"}])
    );
    let policy = parse(by_rule).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(policy.absolute_timeout_ms(), 30 * 60 * 1000);
    assert_eq!((policy.masks().ipv4(), policy.masks().ipv6()), (24, 64));
    let by_service = &policies[1]["spec"];
    assert_eq!(by_service["targetRefs"][0]["kind"], "Service");
    assert_eq!(by_service["targetRefs"][0]["group"], "");
    parse(by_service).unwrap_or_else(|e| panic!("{e}"));

    let python = match checker_python() {
        Ok(python) => python,
        Err(why) => {
            skip(test, &why);
            return;
        }
    };
    let results = check(&python, &[root().join(EXAMPLE)]);
    assert_eq!(results.len(), 2, "both policies checked: {results:?}");
    for (name, errors) in &results {
        assert!(errors.is_empty(), "{name} is refused: {errors:#?}");
    }
}

/// A bad policy: the example's first policy, changed.
struct Bad {
    name: &'static str,
    change: fn(&mut Value),
    /// The field the refusal must name.
    field: &'static str,
    /// Whether the parser sees it (targetRefs are not its business).
    parser: bool,
}

fn bad_cases() -> Vec<Bad> {
    vec![
        Bad {
            name: "ip-mask-129",
            change: |s| s["ipMask"] = json!(129),
            field: "ipMask",
            parser: true,
        },
        Bad {
            name: "ipv4-mask-33",
            change: |s| s["ipv4Mask"] = json!(33),
            field: "ipv4Mask",
            parser: true,
        },
        Bad {
            name: "ipv6-mask-129",
            change: |s| s["ipv6Mask"] = json!(129),
            field: "ipv6Mask",
            parser: true,
        },
        Bad {
            name: "absolute-in-words",
            change: |s| s["absoluteTimeout"] = json!("10 minutes"),
            field: "absoluteTimeout",
            parser: true,
        },
        Bad {
            name: "absolute-missing",
            change: |s| {
                s.as_object_mut().unwrap().remove("absoluteTimeout");
            },
            field: "absoluteTimeout",
            parser: true,
        },
        Bad {
            name: "idle-in-days",
            change: |s| s["idleTimeout"] = json!("1d"),
            field: "idleTimeout",
            parser: true,
        },
        Bad {
            name: "mask-typo",
            change: |s| {
                let mask = s.as_object_mut().unwrap().remove("ipv4Mask").unwrap();
                s["ipv4Msak"] = mask;
            },
            field: "ipv4Msak",
            parser: true,
        },
        Bad {
            name: "targets-a-gateway",
            change: |s| s["targetRefs"][0]["kind"] = json!("Gateway"),
            field: "spec.targetRefs[0].kind",
            parser: false,
        },
        Bad {
            name: "no-targets",
            change: |s| s["targetRefs"] = json!([]),
            field: "spec.targetRefs",
            parser: false,
        },
        Bad {
            name: "rule-name-in-capitals",
            change: |s| s["targetRefs"][0]["sectionName"] = json!("API"),
            field: "spec.targetRefs[0].sectionName",
            parser: false,
        },
    ]
}

#[test]
fn bad_policies_are_refused_naming_the_field() {
    let test = "bad_policies_are_refused_naming_the_field";
    let docs = documents(EXAMPLE);
    let good = docs.iter().find(|d| d["kind"] == KIND).expect("a policy");
    let cases = bad_cases();
    let mut text = String::new();
    for case in &cases {
        let mut policy = good.clone();
        policy["metadata"]["name"] = json!(case.name);
        (case.change)(&mut policy["spec"]);
        if case.parser {
            let err = parse(&policy["spec"]).expect_err(case.name);
            assert!(
                err.contains(case.field),
                "{}: the parser says {err}",
                case.name
            );
        }
        text.push_str("---\n");
        text.push_str(&serde_norway::to_string(&policy).unwrap());
    }
    let python = match checker_python() {
        Ok(python) => python,
        Err(why) => {
            skip(test, &why);
            return;
        }
    };
    let file = out_dir(test).join("bad-policies.yaml");
    std::fs::write(&file, text).unwrap();
    let results = check(&python, &[file]);
    assert_eq!(
        results.len(),
        cases.len(),
        "every case checked: {results:?}"
    );
    for case in &cases {
        let errors = &results[case.name];
        assert!(!errors.is_empty(), "{}: the schema accepts it", case.name);
        assert!(
            errors.iter().any(|e| e.contains(case.field)),
            "{}: no error names {}: {errors:#?}",
            case.name,
            case.field
        );
    }
}

/// A spec the parser refuses, and the field its error names.
type ParserRefuses = Option<(&'static str, Value)>;

/// Rules a plain JSON schema cannot say: the CRD must hold them as CEL (`x-kubernetes-
/// validations`), at `node` (a JSON pointer into the schema), with `rule` in its text.
/// Where the parser has the same rule, the case shows it refusing.
#[test]
fn what_only_cel_can_check_is_in_the_crd_as_cel() {
    let crd = crd();
    let schema = schema(&crd);
    let spec = "/properties/spec";
    let absolute = "/properties/spec/properties/absoluteTimeout";
    let idle = "/properties/spec/properties/idleTimeout";
    let targets = "/properties/spec/properties/targetRefs";
    let target = "/properties/spec/properties/targetRefs/items";
    let cases: [(&str, &str, ParserRefuses); 7] = [
        (
            absolute,
            "duration(self) > duration('0s')",
            Some(("absoluteTimeout", json!({"absoluteTimeout": "0s"}))),
        ),
        (
            absolute,
            "duration(self) <= duration('720h')",
            Some(("absoluteTimeout", json!({"absoluteTimeout": "720h1ms"}))),
        ),
        (
            idle,
            "duration(self) > duration('0s')",
            Some((
                "idleTimeout",
                json!({"absoluteTimeout": "5m", "idleTimeout": "0ms"}),
            )),
        ),
        (
            spec,
            "duration(self.idleTimeout) <= duration(self.absoluteTimeout)",
            Some((
                "idleTimeout",
                json!({"absoluteTimeout": "5m", "idleTimeout": "5m1ms"}),
            )),
        ),
        (target, "self.group == '' && self.kind == 'Service'", None),
        (
            target,
            "!has(self.sectionName) || self.kind != 'Service'",
            None,
        ),
        (targets, "self.exists_one(", None),
    ];
    for (node, rule, parser) in cases {
        let rules: Vec<String> = schema
            .pointer(node)
            .unwrap_or_else(|| panic!("no schema at {node}"))["x-kubernetes-validations"]
            .as_array()
            .map(|rules| {
                rules
                    .iter()
                    .map(|r| {
                        r["rule"]
                            .as_str()
                            .unwrap()
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            rules.iter().any(|r| r.contains(rule)),
            "{node}: no CEL rule with {rule:?} in {rules:#?}"
        );
        if let Some((field, spec)) = parser {
            let err = parse(&spec).expect_err(rule);
            assert!(err.contains(field), "{spec}: the parser says {err}");
        }
    }
    // The same bounds in the parser: 720h is the longest lease it takes.
    parse(&json!({"absoluteTimeout": "720h", "idleTimeout": "720h"})).expect("720h is allowed");
}
