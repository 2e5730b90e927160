//! Every network builds, trains a step and runs inference with
//! `NormKind::Instance` (InstanceNorm2d, affine, no running statistics).

use seg_core::{Device, Tensor};
use seg_models::{ModelConfig, Network, NormKind, MODEL_NAMES};

#[test]
fn every_network_runs_with_instance_norm() {
    for name in MODEL_NAMES {
        let cfg = ModelConfig::from_name(name)
            .unwrap()
            .with_base(4)
            .with_in_channels(2)
            .with_norm(NormKind::Instance);
        cfg.validate().unwrap();
        // the configuration round-trips with the instance norm in it
        assert_eq!(ModelConfig::from_json(&cfg.to_json()).unwrap(), cfg);
        let net = Network::new(&cfg, &Device::Cpu, 0).unwrap();
        assert!(
            net.params()
                .vars()
                .iter()
                .all(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var")),
            "{name}: instance norm keeps no running statistics"
        );
        // batch of one: instance norm needs no batch statistics
        let x = Tensor::randn(0f32, 1.0, (1, 2, 16, 16), &Device::Cpu).unwrap();
        let y = net.forward_t(&x, true).unwrap();
        assert_eq!(y.dims(), &[1, 1, 16, 16], "{name}");
        let loss = y.sqr().unwrap().mean_all().unwrap();
        let grads = loss.backward().unwrap();
        for (k, v) in net.params().trainable() {
            assert!(
                grads.get(v.as_tensor()).is_some(),
                "{name}: no gradient for {k}"
            );
        }
        let e = net.forward_t(&x, false).unwrap();
        let v = e.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|a| a.is_finite()), "{name}");
        // train and eval mode are the same map (statistics come from the input)
        let t = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in t.iter().zip(&v) {
            assert!((a - b).abs() < 1e-5, "{name}: {a} vs {b}");
        }
    }
}
