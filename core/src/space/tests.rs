use super::*;
use crate::rng::Rng;
use proptest::prelude::Strategy;
use proptest::prelude::*;

fn nb201() -> SearchSpace {
    SearchSpace::nas_bench_201()
}

fn mixed() -> SearchSpace {
    SearchSpace::new(
        Some(ArchitectureSpace::Layers(vec![
            LayerOptions {
                operations: vec!["conv_3x3".into(), "conv_5x5".into()],
                widths: vec![16, 32],
            },
            LayerOptions {
                operations: vec!["mbconv".into()],
                widths: vec![64],
            },
        ])),
        vec![
            Hyperparameter {
                name: "lr".into(),
                domain: Domain::Real {
                    min: 1e-4,
                    max: 0.1,
                    log: true,
                },
            },
            Hyperparameter {
                name: "batch".into(),
                domain: Domain::Choice {
                    options: vec!["64".into(), "128".into()],
                },
            },
            Hyperparameter {
                name: "layers".into(),
                domain: Domain::Int { min: 1, max: 40 },
            },
            Hyperparameter {
                name: "dropout".into(),
                domain: Domain::Real {
                    min: 0.0,
                    max: 0.5,
                    log: false,
                },
            },
        ],
    )
    .unwrap()
}

#[test]
fn grid_enumerates_every_nb201_cell_once() {
    let s = nb201();
    assert_eq!(s.grid_size(), 15_625);
    let mut strings = std::collections::HashSet::new();
    for k in 0..15_625 {
        let p = s.grid_point(k).unwrap();
        assert!(strings.insert(s.format(&p)));
    }
    assert_eq!(strings.len(), 15_625);
    assert!(s.grid_point(15_625).is_none());
}

#[test]
fn nb201_has_4930_distinct_networks() {
    // The NAS-Bench-201 paper counts 6,466 unique topologies with a string heuristic that keeps
    // zero terms and does not flatten identity edges; treating a zero-input edge as absent and an
    // identity edge as carrying its input's sum merges exactly equal functions further.
    let s = nb201();
    let keys: std::collections::HashSet<String> = (0..15_625)
        .map(|k| s.key(&s.grid_point(k).unwrap()))
        .collect();
    assert_eq!(keys.len(), 4_930);
}

#[test]
fn nb201_neighbourhood_is_every_single_edge_change() {
    let s = nb201();
    let p = s.sample(&mut Rng::new(3));
    let n = s.neighbours(&p);
    assert_eq!(n.len(), 6 * 4);
    for q in &n {
        assert_eq!(p.iter().zip(q).filter(|(a, b)| a != b).count(), 1);
    }
}

#[test]
fn path_encoding_counts_paths_without_zero_ops() {
    let s = nb201();
    let all_conv = s.parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|").unwrap();
    assert_eq!(s.paths(&all_conv).len(), 4);
    let only_direct = s
        .parse("|none~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|")
        .unwrap();
    assert_eq!(s.paths(&only_direct).len(), 1);
    assert!(
        s.paths(
            &s.parse("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")
                .unwrap()
        )
        .is_empty()
    );
}

#[test]
fn bad_spaces_name_the_field() {
    let e = SearchSpace::new(
        Some(ArchitectureSpace::Cell(CellSpace {
            nodes: 4,
            operations: vec![],
        })),
        vec![],
    )
    .unwrap_err();
    assert_eq!(e.field, "cell.operations");
    let e = SearchSpace::new(
        None,
        vec![Hyperparameter {
            name: "lr".into(),
            domain: Domain::Real {
                min: 0.0,
                max: 1.0,
                log: true,
            },
        }],
    )
    .unwrap_err();
    assert_eq!(e.field, "hyperparameters[0].float.min");
    let e = SearchSpace::new(
        Some(ArchitectureSpace::Cell(CellSpace {
            nodes: 4,
            operations: vec!["a|b".into()],
        })),
        vec![],
    )
    .unwrap_err();
    assert!(e.to_string().contains("cell.operations[0]"), "{e}");
    assert!(SearchSpace::new(None, vec![]).is_err());
}

#[test]
fn parse_rejects_outside_values() {
    let s = mixed();
    let e = s
        .parse("conv_7x7@16,mbconv@64;lr=0.01;batch=64;layers=3;dropout=0.1")
        .unwrap_err();
    assert!(e.problem.contains("conv_7x7"), "{e}");
    let e = s
        .parse("conv_3x3@16,mbconv@64;lr=5;batch=64;layers=3;dropout=0.1")
        .unwrap_err();
    assert_eq!(e.field, "hyperparameters.lr");
    let e = s
        .parse("conv_3x3@16,mbconv@64;lr=0.01;batch=64;layers=3")
        .unwrap_err();
    assert_eq!(e.field, "hyperparameters.dropout");
}

fn spaces() -> impl Strategy<Value = SearchSpace> {
    prop_oneof![
        Just(nb201()),
        Just(mixed()),
        (2usize..7, 1usize..6).prop_map(|(nodes, n_ops)| {
            let mut ops: Vec<String> = (0..n_ops).map(|i| format!("op{i}")).collect();
            ops[0] = "none".into();
            SearchSpace::new(
                Some(ArchitectureSpace::Cell(CellSpace {
                    nodes,
                    operations: ops,
                })),
                vec![],
            )
            .unwrap()
        })
    ]
}

proptest! {
    #[test]
    fn samples_mutations_and_neighbours_stay_in_the_space(space in spaces(), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let p = space.sample(&mut rng);
        prop_assert!(space.contains(&p));
        let m = space.mutate(&p, &mut rng);
        prop_assert!(space.contains(&m));
        prop_assert!(p.iter().zip(&m).filter(|(a, b)| a != b).count() <= 1);
        for q in space.neighbours(&p) {
            prop_assert!(space.contains(&q));
            prop_assert_ne!(&q, &p);
        }
    }

    #[test]
    fn strings_round_trip(space in spaces(), seed in any::<u64>()) {
        let p = space.sample(&mut Rng::new(seed));
        let text = space.format(&p);
        let back = space.parse(&text).unwrap();
        prop_assert_eq!(space.format(&back), text.clone());
        prop_assert_eq!(space.key(&back), space.key(&p));
        if let Some(arch) = space.architecture(&p) {
            let arch_text = arch.to_string();
            prop_assert_eq!(Architecture::parse(&arch_text).unwrap().to_string(), arch_text);
        }
    }

    #[test]
    fn key_is_shared_by_isomorphic_cells(seed in any::<u64>()) {
        // Swapping intermediate nodes 1 and 2 of a NAS-Bench-201 cell with no 1->2 edge is an
        // isomorphism: the key must not change.
        let s = nb201();
        let mut p = s.sample(&mut Rng::new(seed));
        p[2] = Value::Choice(0);
        let mut q = p.clone();
        q.swap(0, 1); // 0->1 <-> 0->2
        q.swap(4, 5); // 1->3 <-> 2->3
        prop_assert_eq!(s.key(&p), s.key(&q));
    }
}
