//! The workspace's dependency direction: the appliance never links central
//! code (DESIGN.md, "Workspace"), and the crates the fuzz targets build
//! (`fuzz/`: the apt parsers, the patch core, proto, the uplink wire and
//! batch codec, the alerting model) and the console link no storage; quinn
//! is the patched copy in `third_party/quinn`. Reads
//! the resolved dependency graph with `cargo tree` (no build), so it takes
//! well under a second.

use std::process::Command;

/// Crates only `outpost-central` needs; none may reach the appliance.
/// (argon2 left this list when the appliance got local users: both ends
/// share `outpost_web::login`.)
const CENTRAL_ONLY: &[&str] = &["outpost-central"];

/// Names of the crates in `cargo tree -p <package> -e normal`.
fn normal_dependencies(package: &str) -> Vec<String> {
    normal_dependencies_with(package, &[])
}

/// Names of the crates in `cargo tree -p <package> -e normal <extra>`.
fn normal_dependencies_with(package: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["-p", package, "-e", "normal"];
    args.extend_from_slice(extra);
    cargo_tree(&args)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The output of `cargo tree --offline --prefix none <args>` for the
/// workspace.
fn cargo_tree(args: &[&str]) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(cargo)
        .args(["tree", "--offline", "--prefix", "none"])
        .args(["--manifest-path", manifest])
        .args(args)
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The appliance holds one QUIC connection per agent: it builds on the
/// patched quinn in third_party/ (OUTPOST-PATCH.md there: 6.5–13 KB less
/// per connection), not on the crates.io copy a stray `cargo update` or a
/// dropped `[patch]` entry would bring back.
#[test]
fn quinn_is_the_patched_copy_in_third_party() {
    let tree = cargo_tree(&[
        "-p",
        "outpost-appliance",
        "-e",
        "normal",
        "-i",
        "quinn",
        "--depth",
        "0",
    ]);
    let line = tree.lines().next().unwrap_or_default();
    assert!(line.starts_with("quinn v"), "{tree}");
    assert!(
        line.contains("third_party/quinn)"),
        "quinn does not resolve to third_party/quinn: {line}"
    );
}

#[test]
fn the_appliance_links_no_central_only_crate() {
    let deps = normal_dependencies("outpost-appliance");
    assert!(
        deps.iter().any(|d| d == "outpost-uplink"),
        "the tree should list the appliance's own dependencies: {deps:?}"
    );
    for c in CENTRAL_ONLY {
        assert!(
            !deps.iter().any(|d| d == c),
            "outpost-appliance depends on {c}, which only outpost-central may use \
             (see `cargo tree -p outpost-appliance -i {c}`)"
        );
    }
    // The list is not stale: central's binary crate does exist in the tree.
    let central = normal_dependencies("outpost-central");
    assert!(central.iter().any(|d| d == "outpost-web"), "{central:?}");
}

/// Crates that link RocksDB or the appliance's storage (the C++ build takes
/// ~10 minutes and every sanitizer flag change rebuilds it).
const STORAGE_CRATES: &[&str] = &["outpost-storage", "rocksdb", "librocksdb-sys"];

#[test]
fn the_apt_parsers_link_no_storage_so_their_fuzz_build_is_quick() {
    let deps = normal_dependencies("outpost-apt");
    assert!(
        deps.iter().any(|d| d == "httparse"),
        "the tree should list outpost-apt's own dependencies: {deps:?}"
    );
    for c in STORAGE_CRATES {
        assert!(
            !deps.iter().any(|d| d == c),
            "outpost-apt depends on {c}: its parsers must stay RocksDB-free \
             (see `cargo tree -p outpost-apt -i {c}`)"
        );
    }
    // The list is not stale: the appliance, which uses outpost-apt, does link them.
    let appliance = normal_dependencies("outpost-appliance");
    for c in STORAGE_CRATES {
        assert!(
            appliance.iter().any(|d| d == c),
            "{c} not in the appliance's tree"
        );
    }
    assert!(appliance.iter().any(|d| d == "outpost-apt"));
}

#[test]
fn the_patch_core_links_no_storage_so_its_fuzz_build_is_quick() {
    let deps = normal_dependencies("outpost-patch");
    assert!(
        deps.iter().any(|d| d == "serde_json"),
        "the tree should list outpost-patch's own dependencies: {deps:?}"
    );
    for c in STORAGE_CRATES {
        assert!(
            !deps.iter().any(|d| d == c),
            "outpost-patch depends on {c}: version order, scan parsers, catalogs \
             and assessment must stay RocksDB-free (see `cargo tree -p outpost-patch -i {c}`)"
        );
    }
}

/// The console is shared by central and the appliance: it links no
/// storage (its data comes from a backend), so neither pays for the
/// other's engine through it.
#[test]
fn the_console_links_no_storage() {
    let deps = normal_dependencies("outpost-console");
    assert!(
        deps.iter().any(|d| d == "maud") && deps.iter().any(|d| d == "outpost-web"),
        "the tree should list outpost-console's own dependencies: {deps:?}"
    );
    for c in STORAGE_CRATES {
        assert!(
            !deps.iter().any(|d| d == c),
            "outpost-console depends on {c}: it must stay RocksDB-free \
             (see `cargo tree -p outpost-console -i {c}`)"
        );
    }
}

/// The workspace crates holding the parsers `fuzz/` fuzzes, with the cargo
/// flags the fuzz build uses for them.
const FUZZED_CRATES: &[(&str, &[&str])] = &[
    ("outpost-proto", &["--no-default-features"]),
    ("outpost-uplink", &["--no-default-features"]),
    ("outpost-alerting", &[]),
];

#[test]
fn the_fuzzed_parsers_link_no_rocksdb() {
    for (package, flags) in FUZZED_CRATES {
        let deps = normal_dependencies_with(package, flags);
        assert!(
            deps.iter().any(|d| d == package),
            "the tree should list {package} itself: {deps:?}"
        );
        for c in STORAGE_CRATES {
            assert!(
                !deps.iter().any(|d| d == c),
                "{package} {flags:?} depends on {c}: the fuzz build would link RocksDB \
                 (see `cargo tree -p {package} {} -e normal -i {c}`)",
                flags.join(" ")
            );
        }
    }
    // The check is not vacuous: with its default (appliance) feature the
    // uplink crate does link RocksDB.
    let uplink = normal_dependencies("outpost-uplink");
    assert!(uplink.iter().any(|d| d == "librocksdb-sys"), "{uplink:?}");
}

/// The TLS stack: the binaries' certificates and handshakes. The fuzzed
/// parsers need none of it, and compiling it with sanitizers took a
/// minute of every fresh fuzz build.
const TLS_CRATES: &[&str] = &["rustls", "ring", "rcgen", "x509-parser"];

#[test]
fn the_fuzzed_parsers_link_no_tls_stack() {
    for (package, flags) in FUZZED_CRATES {
        let deps = normal_dependencies_with(package, flags);
        for c in TLS_CRATES {
            assert!(
                !deps.iter().any(|d| d == c),
                "{package} {flags:?} depends on {c}: the fuzz build would compile the TLS \
                 stack (see `cargo tree -p {package} {} -e normal -i {c}`)",
                flags.join(" ")
            );
        }
    }
    // Not vacuous: with its default `tls` feature outpost-proto has it all.
    let proto = normal_dependencies("outpost-proto");
    for c in TLS_CRATES {
        assert!(proto.iter().any(|d| d == c), "{c} not in {proto:?}");
    }
}
