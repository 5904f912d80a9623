//! The committed `include/fusion.h` is exactly what cbindgen generates from this crate.

#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn committed_header_is_what_cbindgen_generates() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .unwrap();
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = crate_dir.join("include/fusion.h");
    if std::env::var_os("FUSION_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from what cbindgen generates; refresh it with: \
         FUSION_BLESS=1 cargo test -p capi --test header",
        path.display()
    );
}
