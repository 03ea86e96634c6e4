//! Properties of both version orders: antisymmetry, transitivity and
//! consistency with equality, on generated versions from small alphabets
//! (so that near-equal versions, `~`, `^`, leading zeros and long digit
//! runs meet often).

use std::cmp::Ordering;

use outpost_patch::version::{DebVersion, RpmEvr, rpmvercmp};
use proptest::prelude::*;

fn deb_version() -> impl Strategy<Value = String> {
    prop_oneof![
        // Small alphabet: collisions, tildes, letters vs punctuation.
        "([0-2]:)?[0-9][0-2a~+.]{0,5}(-[0-2a~+.]{1,4})?",
        // Realistic shapes.
        "([0-9]{1,2}:)?[0-9]{1,3}(\\.[0-9]{1,3}){0,3}([~+][a-z0-9.]{1,6})?(-[0-9]{1,2}([~+](deb|b|ubuntu)[0-9]{1,2}(u[0-9])?)?)?",
        // Long digit runs (no overflow allowed) with leading zeros.
        "0{0,3}[0-9]{15,40}(\\.0{0,3}[0-9]{1,30})?",
    ]
}

fn rpm_version() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-2a-b~^._]{0,6}",
        "[0-9]{1,3}(\\.[0-9]{1,3}){0,2}([~^][a-z0-9]{1,4})?",
        "0{0,2}[0-9]{15,40}",
    ]
}

fn deb(s: &str) -> DebVersion {
    DebVersion::parse_lenient(s).expect("strategy makes valid versions")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn dpkg_order_is_antisymmetric(a in deb_version(), b in deb_version()) {
        let (va, vb) = (deb(&a), deb(&b));
        prop_assert_eq!(va.compare(&vb), vb.compare(&va).reverse());
    }

    #[test]
    fn dpkg_order_is_transitive(a in deb_version(), b in deb_version(), c in deb_version()) {
        let mut v = [deb(&a), deb(&b), deb(&c)];
        v.sort();
        prop_assert!(v[0] <= v[1] && v[1] <= v[2] && v[0] <= v[2], "{:?}", v);
        prop_assert!(v[0].compare(&v[2]) != Ordering::Greater);
    }

    #[test]
    fn dpkg_equality_is_consistent_with_the_order(a in deb_version(), b in deb_version()) {
        let (va, vb) = (deb(&a), deb(&b));
        prop_assert_eq!(va.compare(&va), Ordering::Equal);
        prop_assert_eq!(va == vb, va.compare(&vb) == Ordering::Equal);
        if a == b {
            prop_assert_eq!(va.compare(&vb), Ordering::Equal);
        }
        // An explicit zero epoch, and a zero revision, change nothing.
        if !a.contains(':') {
            let zero_epoch = deb(&format!("0:{a}"));
            prop_assert_eq!(zero_epoch.compare(&va), Ordering::Equal);
        }
        if !a.contains('-') && !a.contains(':') {
            prop_assert_eq!(deb(&format!("{a}-0")).compare(&va), Ordering::Equal);
        }
    }

    #[test]
    fn dpkg_parse_of_the_printed_form_is_the_same_version(a in deb_version()) {
        let va = deb(&a);
        let again = deb(va.as_str());
        prop_assert_eq!(again.as_str(), va.as_str());
        prop_assert_eq!(again.compare(&va), Ordering::Equal);
    }

    #[test]
    fn dpkg_parse_never_panics_on_any_string(s in "\\PC{0,40}") {
        let _ = DebVersion::parse(&s);
        if let (Ok(a), Ok(b)) = (DebVersion::parse_lenient(&s), DebVersion::parse_lenient("1.0")) {
            prop_assert_eq!(a.compare(&b), b.compare(&a).reverse());
        }
    }

    #[test]
    fn rpmvercmp_is_antisymmetric(a in rpm_version(), b in rpm_version()) {
        prop_assert_eq!(rpmvercmp(&a, &b), rpmvercmp(&b, &a).reverse());
        prop_assert_eq!(rpmvercmp(&a, &a), Ordering::Equal);
    }

    #[test]
    fn rpmvercmp_is_transitive(a in rpm_version(), b in rpm_version(), c in rpm_version()) {
        let mut v = [a, b, c];
        v.sort_by(|x, y| rpmvercmp(x, y));
        prop_assert!(rpmvercmp(&v[0], &v[1]) != Ordering::Greater);
        prop_assert!(rpmvercmp(&v[1], &v[2]) != Ordering::Greater);
        prop_assert!(rpmvercmp(&v[0], &v[2]) != Ordering::Greater, "{:?}", v);
    }

    #[test]
    fn rpm_evr_total_order_is_antisymmetric_and_transitive(
        a in "([0-2]:)?[0-2a.~^]{1,4}(-[0-2a.~]{1,3})?",
        b in "([0-2]:)?[0-2a.~^]{1,4}(-[0-2a.~]{1,3})?",
        c in "([0-2]:)?[0-2a.~^]{1,4}(-[0-2a.~]{1,3})?",
    ) {
        let (ea, eb) = (RpmEvr::parse(&a), RpmEvr::parse(&b));
        prop_assert_eq!(ea.compare(&eb), eb.compare(&ea).reverse());
        let mut v = [ea, eb, RpmEvr::parse(&c)];
        v.sort_by(|x, y| x.compare(y));
        prop_assert!(v[0].compare(&v[2]) != Ordering::Greater, "{:?}", v);
    }
}
