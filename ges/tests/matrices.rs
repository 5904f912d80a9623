//! The compatibility and conversion matrices, checked against the data tables in
//! `tests/testdata/` (the tables are the specification; the code must agree cell by cell).

use ges::{Conversion, LockMode};

fn parse(text: &str) -> Vec<(LockMode, LockMode, String)> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let mut cells = Vec::new();
    let header: Vec<LockMode> = ["NL", "CR", "CW", "PR", "PW", "EX"]
        .iter()
        .map(|a| LockMode::from_abbreviation(a).expect("valid test input"))
        .collect();
    for line in lines.by_ref() {
        let mut words = line.split_whitespace();
        let row =
            LockMode::from_abbreviation(words.next().expect("valid test input")).expect("row mode");
        let values: Vec<&str> = words.collect();
        assert_eq!(values.len(), 6, "row {line}");
        for (column, value) in header.iter().zip(values) {
            cells.push((row, *column, value.to_string()));
        }
    }
    assert_eq!(cells.len(), 36, "a full 6x6 table");
    cells
}

#[test]
fn compatibility_matrix_matches_the_table() {
    for (held, wanted, value) in parse(include_str!("testdata/compatibility.txt")) {
        let expected = match value.as_str() {
            "y" => true,
            "n" => false,
            other => panic!("bad cell {other}"),
        };
        assert_eq!(held.compatible(wanted), expected, "{held:?} vs {wanted:?}");
        assert_eq!(
            wanted.compatible(held),
            expected,
            "symmetry {held:?} {wanted:?}"
        );
    }
}

#[test]
fn conversion_matrix_matches_the_table() {
    for (from, to, value) in parse(include_str!("testdata/conversion.txt")) {
        let expected = match value.as_str() {
            "=" => Conversion::Same,
            "down" => Conversion::Down,
            "up" => Conversion::Up,
            other => panic!("bad cell {other}"),
        };
        assert_eq!(from.conversion(to), expected, "{from:?} -> {to:?}");
    }
}

#[test]
fn down_conversion_never_conflicts_with_what_was_compatible() {
    for from in LockMode::ALL {
        for to in LockMode::ALL {
            if from.conversion(to) == Conversion::Down {
                for other in LockMode::ALL {
                    assert!(!from.compatible(other) || to.compatible(other));
                }
            }
        }
    }
}

#[test]
fn join_covers_both_and_is_the_weakest_such_mode() {
    for a in LockMode::ALL {
        for b in LockMode::ALL {
            let j = a.join(b);
            assert!(j.covers(a) && j.covers(b));
            for m in LockMode::ALL {
                if m.covers(a) && m.covers(b) {
                    assert!(
                        m.covers(j),
                        "{m:?} covers {a:?},{b:?} but not their join {j:?}"
                    );
                }
            }
        }
    }
    assert_eq!(
        LockMode::ProtectedRead.join(LockMode::ConcurrentWrite),
        LockMode::ProtectedWrite
    );
}
