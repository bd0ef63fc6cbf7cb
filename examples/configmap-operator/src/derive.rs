//! What the operator wants to exist for a source ConfigMap: pure, no I/O.

use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::{Resource as _, ResourceExt as _};
use std::collections::BTreeMap;

/// The label that makes a ConfigMap a source.
pub const SOURCE_LABEL: &str = "example.leasehold.dev/source";
/// The label on derived ConfigMaps; its value is the source's name.
pub const DERIVED_LABEL: &str = "example.leasehold.dev/derived-from";
/// The source annotation that picks the transform: `copy` (the default) or `upper`.
pub const TRANSFORM: &str = "example.leasehold.dev/transform";
/// On a derived object: the source's `resourceVersion` it was derived from.
pub const SOURCE_VERSION: &str = "example.leasehold.dev/source-version";
/// On a derived object: the replica that wrote it.
pub const WRITTEN_BY: &str = "example.leasehold.dev/written-by";

/// A source the operator cannot derive from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The transform annotation names no transform.
    #[error("ConfigMap {configmap:?}: annotation {TRANSFORM}={value:?} is not one of copy, upper")]
    UnknownTransform {
        /// The source's name.
        configmap: String,
        /// The annotation's value.
        value: String,
    },
    /// The source lacks what the API server always sets.
    #[error("ConfigMap {configmap:?} has no {field}")]
    Incomplete {
        /// The source's name.
        configmap: String,
        /// The missing field.
        field: &'static str,
    },
}

/// The derived ConfigMap one source wants.
#[derive(Debug, PartialEq)]
pub struct Derived {
    name: String,
    source: String,
    source_uid: String,
    source_version: String,
    data: BTreeMap<String, String>,
}

impl Derived {
    /// What `source` wants.
    pub fn from_source(source: &ConfigMap) -> Result<Self, Error> {
        let name = source.name_any();
        let missing = |field| Error::Incomplete {
            configmap: name.clone(),
            field,
        };
        let upper = match source.annotations().get(TRANSFORM).map(String::as_str) {
            None | Some("copy") => false,
            Some("upper") => true,
            Some(other) => {
                return Err(Error::UnknownTransform {
                    configmap: name,
                    value: other.to_owned(),
                });
            }
        };
        let data = source
            .data
            .iter()
            .flatten()
            .map(|(k, v)| {
                let v = if upper { v.to_uppercase() } else { v.clone() };
                (format!("derived-{k}"), v)
            })
            .collect();
        Ok(Self {
            name: format!("{name}-derived"),
            source_uid: source.uid().ok_or_else(|| missing("metadata.uid"))?,
            source_version: source
                .resource_version()
                .ok_or_else(|| missing("metadata.resourceVersion"))?,
            source: name,
            data,
        })
    }

    /// The derived object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `current` already is what the source wants (then nothing is written).
    pub fn is_current(&self, current: Option<&ConfigMap>) -> bool {
        current.is_some_and(|c| {
            c.annotations().get(SOURCE_VERSION) == Some(&self.source_version)
                && c.data.as_ref().unwrap_or(&BTreeMap::new()) == &self.data
        })
    }

    /// The object to write, by replica `by`.
    pub fn into_object(self, by: &str) -> ConfigMap {
        let mut cm = ConfigMap {
            data: Some(self.data),
            ..ConfigMap::default()
        };
        let meta = cm.meta_mut();
        meta.name = Some(self.name);
        meta.labels = Some(BTreeMap::from([(
            DERIVED_LABEL.into(),
            self.source.clone(),
        )]));
        meta.annotations = Some(BTreeMap::from([
            (SOURCE_VERSION.into(), self.source_version),
            (WRITTEN_BY.into(), by.to_owned()),
        ]));
        meta.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: self.source,
            uid: self.source_uid,
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        cm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(annotations: &[(&str, &str)]) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("app".into());
        cm.metadata.uid = Some("uid-1".into());
        cm.metadata.resource_version = Some("42".into());
        cm.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        cm.data = Some(BTreeMap::from([("greeting".into(), "hello".into())]));
        cm
    }

    #[test]
    fn derives_prefixed_keys_and_the_chosen_transform() {
        let d = Derived::from_source(&source(&[])).unwrap();
        assert_eq!(d.name(), "app-derived");
        let cm = d.into_object("replica-1");
        assert_eq!(cm.data.as_ref().unwrap()["derived-greeting"], "hello");
        assert_eq!(cm.labels()[DERIVED_LABEL], "app");
        assert_eq!(cm.annotations()[SOURCE_VERSION], "42");
        assert_eq!(cm.owner_references()[0].uid, "uid-1");

        let d = Derived::from_source(&source(&[(TRANSFORM, "upper")])).unwrap();
        assert_eq!(d.data["derived-greeting"], "HELLO");
    }

    #[test]
    fn an_unknown_transform_is_an_error_naming_the_configmap_and_value() {
        let e = Derived::from_source(&source(&[(TRANSFORM, "rot13")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ConfigMap \"app\": annotation example.leasehold.dev/transform=\"rot13\" is not one of copy, upper"
        );
    }

    #[test]
    fn current_only_when_source_version_and_data_match() {
        let d = Derived::from_source(&source(&[])).unwrap();
        assert!(!d.is_current(None));
        let written = Derived::from_source(&source(&[])).unwrap().into_object("r");
        assert!(d.is_current(Some(&written)));
        let mut newer = source(&[]);
        newer.metadata.resource_version = Some("43".into());
        assert!(
            !Derived::from_source(&newer)
                .unwrap()
                .is_current(Some(&written))
        );
    }
}
