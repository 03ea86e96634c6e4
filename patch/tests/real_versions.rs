//! Both version orders against the real tools, on thousands of real
//! version strings taken from this machine's package data: the dpkg
//! database (`dpkg-query -W`) and apt's package indexes
//! (`/var/lib/apt/lists/*_Packages*`, decompressed by `apt-helper`).
//!
//! dpkg: every version is sorted with our order; `dpkg --compare-versions`
//! then checks each adjacent pair of the sorted list (which, dpkg's order
//! being transitive, checks the whole order of the sample), plus pairs of
//! the same package (installed vs available) and random pairs. The pairs
//! are checked by two shell loops in parallel to stay under 10 s.
//!
//! rpm: `rpm --eval '%{lua: …}'` compares tens of thousands of pairs in
//! one process with rpm's own `rpm.vercmp` (rpm 4.18: `rpmverCmp` on
//! parsed EVRs), on the same real strings plus generated `~`/`^` ones.
//!
//! Each test is skipped, with the reason printed, when its tool is missing
//! (`scripts/deps.sh --test` installs both).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use outpost_patch::version::{DebVersion, RpmEvr};

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// (package name, version) pairs from the dpkg database and apt's indexes.
fn real_versions() -> (BTreeSet<String>, BTreeMap<String, BTreeSet<String>>) {
    let mut all = BTreeSet::new();
    let mut by_package: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut add = |name: &str, version: &str| {
        let version = version.trim();
        if version.is_empty() {
            return;
        }
        all.insert(version.to_string());
        by_package
            .entry(name.to_string())
            .or_default()
            .insert(version.to_string());
    };
    if let Ok(out) = Command::new("dpkg-query")
        .args([
            "-W",
            "-f",
            "${Package}\t${Version}\t${source:Package}\t${source:Version}\n",
        ])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() == 4 {
                add(f[0], f[1]);
                add(&format!("src:{}", f[2]), f[3]);
            }
        }
    }
    let lists = std::fs::read_dir("/var/lib/apt/lists")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().contains("_Packages"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for list in lists {
        let Ok(out) = Command::new("/usr/lib/apt/apt-helper")
            .arg("cat-file")
            .arg(&list)
            .output()
        else {
            continue;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let mut name = String::new();
        for line in text.lines() {
            if let Some(n) = line.strip_prefix("Package: ") {
                name = n.trim().to_string();
            } else if let Some(v) = line.strip_prefix("Version: ") {
                add(&name, v);
            } else if let Some(s) = line.strip_prefix("Source: ") {
                // "Source: name (version)" when it differs from the binary's.
                if let (Some(open), Some(close)) = (s.find('('), s.rfind(')')) {
                    add(&format!("src:{}", s[..open].trim()), &s[open + 1..close]);
                }
            }
        }
    }
    (all, by_package)
}

/// A small deterministic generator (splitmix64), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn op(o: Ordering) -> &'static str {
    match o {
        Ordering::Less => "lt",
        Ordering::Equal => "eq",
        Ordering::Greater => "gt",
    }
}

/// Runs `dpkg --compare-versions A OP B` for every line, in `workers`
/// parallel shells; returns the lines dpkg disagreed with.
fn dpkg_disagreements(checks: &[(String, &'static str, String)], workers: usize) -> Vec<String> {
    let chunk = checks.len().div_ceil(workers).max(1);
    let children: Vec<_> = checks
        .chunks(chunk)
        .map(|part| {
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(r#"while read -r a o b; do dpkg --compare-versions "$a" "$o" "$b" 2>/dev/null || echo "$a $o $b"; done"#)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("sh runs");
            let mut input = String::new();
            for (a, o, b) in part {
                input.push_str(&format!("{a} {o} {b}\n"));
            }
            let mut stdin = child.stdin.take().expect("piped stdin");
            std::thread::spawn(move || {
                let _ = stdin.write_all(input.as_bytes());
            });
            child
        })
        .collect();
    let mut bad = Vec::new();
    for child in children {
        let out = child.wait_with_output().expect("sh finishes");
        bad.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string),
        );
    }
    bad
}

#[test]
fn dpkg_order_matches_dpkg_compare_versions_on_this_machines_versions() {
    if !have("dpkg", "--version") {
        eprintln!("SKIPPED: dpkg is not installed (scripts/deps.sh --test installs it)");
        return;
    }
    let started = Instant::now();
    let (all, by_package) = real_versions();
    let mut parsed = Vec::new();
    for s in &all {
        match DebVersion::parse(s) {
            Ok(v) => parsed.push(v),
            Err(e) => panic!("real version {s:?} refused: {e}"),
        }
    }
    assert!(
        parsed.len() >= 800,
        "only {} distinct versions found",
        parsed.len()
    );

    // A spread-out sample of the sorted-by-string list, then sorted with
    // our order: adjacent pairs are the closest calls.
    let target = 1500;
    let step = (parsed.len() / target).max(1);
    let mut sample: Vec<DebVersion> = parsed.iter().step_by(step).cloned().collect();
    sample.sort();
    let mut checks = Vec::new();
    for w in sample.windows(2) {
        checks.push((w[0].to_string(), op(w[0].compare(&w[1])), w[1].to_string()));
    }
    let adjacent = checks.len();

    // Installed vs available versions of the same package.
    let mut rng = Rng(14);
    let mut same_package = 0;
    for versions in by_package.values().filter(|v| v.len() > 1) {
        let v: Vec<&String> = versions.iter().collect();
        let (a, b) = (v[0], v[v.len() - 1]);
        let o = DebVersion::parse(a)
            .unwrap()
            .compare(&DebVersion::parse(b).unwrap());
        checks.push((a.clone(), op(o), b.clone()));
        same_package += 1;
        if same_package == 900 {
            break;
        }
    }
    // Random pairs across the whole set.
    for _ in 0..600 {
        let a = &parsed[rng.below(parsed.len())];
        let b = &parsed[rng.below(parsed.len())];
        checks.push((a.to_string(), op(a.compare(b)), b.to_string()));
    }

    let bad = dpkg_disagreements(&checks, 2);
    println!(
        "dpkg: {} distinct real versions; checked {} pairs ({adjacent} adjacent in a sorted sample of {}, {same_package} same-package, 600 random) in {:.1?}",
        parsed.len(),
        checks.len(),
        sample.len(),
        started.elapsed()
    );
    assert!(
        bad.is_empty(),
        "dpkg disagrees on {} pairs: {:?}",
        bad.len(),
        &bad[..bad.len().min(20)]
    );
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b}")),
        }
    }
    out.push('"');
    out
}

#[test]
fn rpm_order_matches_rpms_own_vercmp_on_real_and_generated_versions() {
    if !have("rpm", "--version") {
        eprintln!(
            "SKIPPED: rpm is not installed (scripts/deps.sh --test installs it); the documented cases in src/version/rpm.rs still ran"
        );
        return;
    }
    let started = Instant::now();
    let (all, _) = real_versions();
    let mut strings: Vec<String> = all.into_iter().collect();
    // Fedora-style shapes rpm's `^` and `~` exist for.
    let mut rng = Rng(4242);
    for _ in 0..2000 {
        let mut s = format!("{}.{}", rng.below(4), rng.below(12));
        for _ in 0..rng.below(3) {
            let sep = ["~", "^", ".", "_", "+"][rng.below(5)];
            let seg = ["rc1", "git20240101", "1", "0", "a", "pre", "10", "001"][rng.below(8)];
            s.push_str(sep);
            s.push_str(seg);
        }
        if rng.below(2) == 0 {
            s.push_str(&format!("-{}.el{}", rng.below(30), 7 + rng.below(3)));
        }
        if rng.below(4) == 0 {
            s = format!("{}:{s}", rng.below(3));
        }
        strings.push(s);
    }
    let mut pairs = Vec::new();
    let mut sorted: Vec<(RpmEvr, &String)> =
        strings.iter().map(|s| (RpmEvr::parse(s), s)).collect();
    sorted.sort_by(|a, b| a.0.compare(&b.0));
    for w in sorted.windows(2) {
        pairs.push((w[0].1, w[1].1));
    }
    for _ in 0..30_000 {
        pairs.push((
            &strings[rng.below(strings.len())],
            &strings[rng.below(strings.len())],
        ));
    }
    let mut lua = String::from("local p = {\n");
    for (a, b) in &pairs {
        let want = match RpmEvr::parse(a).compare(&RpmEvr::parse(b)) {
            Ordering::Less => -1,
            Ordering::Equal => 0,
            Ordering::Greater => 1,
        };
        lua.push_str(&format!(
            "{{{},{},{want}}},\n",
            lua_string(a),
            lua_string(b)
        ));
    }
    lua.push_str(
        "}\nlocal bad = 0\nfor _, t in ipairs(p) do\n  local r = rpm.vercmp(t[1], t[2])\n  if r ~= t[3] then bad = bad + 1\n    if bad <= 20 then print('MISMATCH ' .. t[1] .. ' ' .. t[2] .. ' rpm=' .. r .. ' ours=' .. t[3]) end\n  end\nend\nprint('CHECKED ' .. #p .. ' BAD ' .. bad)\n",
    );
    let dir = std::env::temp_dir().join(format!("outpost-patch-rpm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("pairs.lua");
    std::fs::write(&script, lua).unwrap();
    let out = Command::new("rpm")
        .arg("--eval")
        .arg(format!("%{{lua: dofile(\"{}\")}}", script.display()))
        .output()
        .expect("rpm runs");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "rpm: {} strings ({} real), {} pairs in {:.1?}: {}",
        strings.len(),
        strings.len() - 2000,
        pairs.len(),
        started.elapsed(),
        stdout.lines().last().unwrap_or("")
    );
    assert!(
        stdout.contains(&format!("CHECKED {} BAD 0", pairs.len())),
        "rpm disagrees:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
