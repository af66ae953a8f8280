//! The route-file corpus: example routes in the shapes Gateway API users write (plain
//! routing, path routing, traffic splitting, header matches, filters, persistence on the
//! rule or by policy, a `kubectl` export), each with the outcome its first line states:
//! `# expect: accepted` (served, nothing refused) or `# expect: refused FIELD` (nothing
//! served, one refusal naming FIELD).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use affinity_client::gateway::routes::{Options, RouteTable};

#[test]
fn every_example_route_is_accepted_or_refused_as_it_says() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/routes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the corpus is in {}", dir.display());
    let options = Options::for_dataplane(None).unwrap();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{name}: the first line must say # expect: ..."));
        let table = RouteTable::parse_with(&text, &options)
            .unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
        if expect == "accepted" {
            assert!(
                table.refused.is_empty() && !table.routes.is_empty(),
                "{name}: refused {:?}",
                table.refused
            );
            for rule in table.rules() {
                assert!(
                    !rule.endpoints.is_empty(),
                    "{name}: {} has no endpoint",
                    rule.scope
                );
                assert!(
                    rule.proposed().next().is_some(),
                    "{name}: {} takes no new clients",
                    rule.scope
                );
            }
        } else {
            let field = expect
                .strip_prefix("refused ")
                .unwrap_or_else(|| panic!("{name}: expect accepted or refused FIELD"));
            assert!(table.routes.is_empty(), "{name}: something was served");
            let [refusal] = table.refused.as_slice() else {
                panic!("{name}: one refusal expected, got {:?}", table.refused);
            };
            assert_eq!(refusal.field, field, "{name}: {refusal}");
            assert!(!refusal.rule.is_empty(), "{name}: the refusal says why");
        }
    }
}

#[test]
fn the_canary_splits_nine_to_one() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/routes");
    let text = std::fs::read_to_string(dir.join("traffic-split.yaml")).unwrap();
    let table = RouteTable::parse(&text).unwrap();
    let rule = table.rules().next().unwrap();
    assert_eq!(rule.endpoints, ["10.1.3.1:80", "10.1.4.1:80"]);
    assert_eq!(rule.weights, [9, 1]);
}

#[test]
fn the_exported_list_reads_endpoints_from_its_slices() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/routes");
    let text = std::fs::read_to_string(dir.join("exported-list.yaml")).unwrap();
    let options = Options::for_dataplane(Some("retail/public-edge")).unwrap();
    let table = RouteTable::parse_with(&text, &options).unwrap();
    let rule = table.rules().next().unwrap();
    assert_eq!(rule.endpoints, ["10.244.1.17:8080", "10.244.2.9:8080"]);
    assert_eq!(
        rule.weights,
        [1, 0],
        "the terminating pod keeps its clients only"
    );
    let other = Options::for_dataplane(Some("retail/internal")).unwrap();
    assert!(
        RouteTable::parse_with(&text, &other)
            .unwrap()
            .routes
            .is_empty()
    );
}

#[test]
fn the_drained_canary_keeps_its_clients_on_the_policy() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/routes");
    let text = std::fs::read_to_string(dir.join("traffic-split-sticky.yaml")).unwrap();
    let table = RouteTable::parse(&text).unwrap();
    let rule = table.rules().next().unwrap();
    assert_eq!(rule.scope, "retail/canary/api");
    assert_eq!(rule.endpoints, ["10.1.4.1:80", "10.1.3.1:80"]);
    assert_eq!(rule.weights, [1, 0]);
    let policy = rule.persistence.unwrap();
    assert_eq!((policy.masks().ipv4(), policy.masks().ipv6()), (24, 56));
    assert!(table.warnings.is_empty(), "{:?}", table.warnings);
}
