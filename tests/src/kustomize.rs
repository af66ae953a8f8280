//! A small kustomize renderer for the project's own manifests, so they can be checked
//! without `kubectl` or `kustomize` on the machine.
//!
//! It supports exactly what `deploy/kubernetes` uses, and refuses anything else by name
//! (so a manifest that starts using another feature fails here instead of being rendered
//! wrongly): `resources` (files, possibly multi-document, and folders holding a
//! `kustomization.yaml`), `namespace`, `images` (`newName`, `newTag`), `replicas`, and
//! `patches` given as a `path` to a strategic-merge patch (matched by kind and name; maps
//! merge, `null` deletes a field, lists of objects merge by their `name`, other lists are
//! replaced).

use std::path::Path;

use serde_json::Value;

/// Every object the kustomization in `dir` produces, in order.
pub fn render(dir: &Path) -> Result<Vec<Value>, String> {
    let path = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let spec: Value =
        serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let fields = spec
        .as_object()
        .ok_or_else(|| format!("{}: not a mapping", path.display()))?;
    for key in fields.keys() {
        if ![
            "apiVersion",
            "kind",
            "resources",
            "namespace",
            "images",
            "replicas",
            "patches",
        ]
        .contains(&key.as_str())
        {
            return Err(format!(
                "{}: field {key:?} is not supported by the test renderer",
                path.display()
            ));
        }
    }
    let mut objects = Vec::new();
    for resource in list(&spec, "resources") {
        let name = resource
            .as_str()
            .ok_or_else(|| format!("{}: a resource is not a path", path.display()))?;
        let target = dir.join(name);
        if target.is_dir() {
            objects.extend(render(&target)?);
        } else {
            objects.extend(documents(&target)?);
        }
    }
    if let Some(namespace) = spec.get("namespace").and_then(Value::as_str) {
        for object in &mut objects {
            object["metadata"]["namespace"] = Value::from(namespace);
        }
    }
    for image in list(&spec, "images") {
        let name = text_field(image, "name", &path)?;
        for object in &mut objects {
            for container in containers_mut(object) {
                retag(container, name, image);
            }
        }
    }
    for replicas in list(&spec, "replicas") {
        let name = text_field(replicas, "name", &path)?;
        let count = replicas
            .get("count")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("{}: replicas of {name} has no count", path.display()))?;
        let mut found = false;
        for object in &mut objects {
            let workload = ["Deployment", "StatefulSet", "ReplicaSet"]
                .contains(&object["kind"].as_str().unwrap_or_default());
            if workload && object["metadata"]["name"] == name {
                object["spec"]["replicas"] = Value::from(count);
                found = true;
            }
        }
        if !found {
            return Err(format!(
                "{}: replicas names no workload {name:?}",
                path.display()
            ));
        }
    }
    for patch in list(&spec, "patches") {
        let file = text_field(patch, "path", &path)?;
        for change in documents(&dir.join(file))? {
            let target = objects.iter_mut().find(|o| {
                o["kind"] == change["kind"] && o["metadata"]["name"] == change["metadata"]["name"]
            });
            let Some(target) = target else {
                return Err(format!(
                    "{}: patch {file} names no object {} {}",
                    path.display(),
                    change["kind"],
                    change["metadata"]["name"]
                ));
            };
            merge(target, &change);
        }
    }
    Ok(objects)
}

/// Apply a strategic-merge patch (the subset described in the module docs).
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    base.remove(key);
                } else if let Some(existing) = base.get_mut(key) {
                    merge(existing, value);
                } else {
                    base.insert(key.clone(), value.clone());
                }
            }
        }
        (Value::Array(base), Value::Array(patch))
            if patch.iter().all(|item| item.get("name").is_some()) =>
        {
            for item in patch {
                match base.iter_mut().find(|b| b.get("name") == item.get("name")) {
                    Some(existing) => merge(existing, item),
                    None => base.push(item.clone()),
                }
            }
        }
        (base, patch) => *base = patch.clone(),
    }
}

/// The YAML documents of one file.
pub fn documents(path: &Path) -> Result<Vec<Value>, String> {
    use serde::Deserialize as _;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut objects = Vec::new();
    for document in serde_norway::Deserializer::from_str(&text) {
        let value = Value::deserialize(document).map_err(|e| format!("{}: {e}", path.display()))?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

fn list<'a>(spec: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    spec.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn text_field<'a>(value: &'a Value, key: &str, path: &Path) -> Result<&'a str, String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{}: an entry has no {key}", path.display()))
}

/// The containers and init containers of a workload's pod template (or of a pod).
pub fn containers_mut(object: &mut Value) -> Vec<&mut Value> {
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let pod = if kind == "Pod" {
        object.get_mut("spec")
    } else {
        object
            .get_mut("spec")
            .and_then(|s| s.get_mut("template"))
            .and_then(|t| t.get_mut("spec"))
    };
    let Some(pod) = pod.and_then(Value::as_object_mut) else {
        return Vec::new();
    };
    pod.iter_mut()
        .filter(|(k, _)| *k == "containers" || *k == "initContainers")
        .filter_map(|(_, v)| v.as_array_mut())
        .flatten()
        .collect()
}

/// Apply an `images` entry to a container whose image has that name.
fn retag(container: &mut Value, name: &str, image: &Value) {
    let Some(current) = container.get("image").and_then(Value::as_str) else {
        return;
    };
    let (base, tag) = match current.rsplit_once(':') {
        Some((b, t)) if !t.contains('/') => (b.to_string(), Some(t.to_string())),
        _ => (current.to_string(), None),
    };
    if base != name {
        return;
    }
    let base = image
        .get("newName")
        .and_then(Value::as_str)
        .map_or(base, str::to_string);
    let tag = image
        .get("newTag")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or(tag);
    container["image"] = Value::from(match tag {
        Some(tag) => format!("{base}:{tag}"),
        None => base,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_resources_images_replicas_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let overlay = dir.path().join("overlay");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::create_dir_all(&overlay).unwrap();
        std::fs::write(
            base.join("kustomization.yaml"),
            "resources: [app.yaml]\nimages:\n  - name: app\n    newTag: v2\n",
        )
        .unwrap();
        std::fs::write(
            base.join("app.yaml"),
            "kind: StatefulSet\nmetadata: {name: app}\nspec:\n  replicas: 3\n  template:\n    spec:\n      containers:\n        - {name: c, image: app}\n---\nkind: Service\nmetadata: {name: app}\n",
        )
        .unwrap();
        std::fs::write(
            overlay.join("kustomization.yaml"),
            "resources: [../base]\nnamespace: prod\nreplicas:\n  - {name: app, count: 5}\n",
        )
        .unwrap();
        let objects = render(&overlay).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0]["spec"]["replicas"], 5);
        assert_eq!(
            objects[0]["spec"]["template"]["spec"]["containers"][0]["image"],
            "app:v2"
        );
        assert_eq!(objects[1]["metadata"]["namespace"], "prod");

        std::fs::write(
            overlay.join("kustomization.yaml"),
            "resources: [../base]\nconfigMapGenerator: []\n",
        )
        .unwrap();
        let err = render(&overlay).unwrap_err();
        assert!(
            err.contains("\"configMapGenerator\" is not supported"),
            "{err}"
        );
        std::fs::write(
            overlay.join("kustomization.yaml"),
            "resources: [../base]\nreplicas:\n  - {name: other, count: 5}\n",
        )
        .unwrap();
        assert!(render(&overlay).unwrap_err().contains("no workload"));
    }

    #[test]
    fn patches_merge_maps_and_named_lists_and_delete_nulls() {
        let mut base = serde_json::json!({
            "spec": {"containers": [{"name": "a", "image": "x", "probe": {"grpc": {"port": 1}}}],
                     "args": ["--one"]}
        });
        let patch = serde_json::json!({
            "spec": {"containers": [{"name": "a", "probe": {"grpc": null, "http": {"port": 2}}},
                                    {"name": "b", "image": "y"}],
                     "args": ["--two"]}
        });
        merge(&mut base, &patch);
        assert_eq!(
            base,
            serde_json::json!({
                "spec": {"containers": [{"name": "a", "image": "x", "probe": {"http": {"port": 2}}},
                                        {"name": "b", "image": "y"}],
                         "args": ["--two"]}
            })
        );
    }
}
