//! The committed CRD manifests are exactly what the code generates.

#[test]
fn committed_verifier_crd_matches_the_rust_types() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/apitokenverifier.yaml"
    ))
    .unwrap();
    assert!(
        committed == tokenmint::verifier_crd_yaml(),
        "crds/apitokenverifier.yaml is out of date: run `make crds`"
    );
}

#[test]
fn committed_crd_matches_the_rust_types() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/apitoken.yaml"))
            .unwrap();
    assert!(
        committed == tokenmint::crd_yaml(),
        "crds/apitoken.yaml is out of date: run `make crds`"
    );
}
