//! Expected tensors of each backbone, generated from the architecture.
//!
//! Layers are listed in Keras `model.layers` order (the order legacy `.h5`
//! files are loaded in), so the same list drives positional import.

/// Layer classes that hold backbone weights. The snake-case class name is what
/// Keras 3 uses to name the layer's group in `model.weights.h5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Conv2D,
    SeparableConv2D,
    DepthwiseConv2D,
    BatchNorm,
}

impl Kind {
    pub(crate) fn keras3_group(self) -> &'static str {
        match self {
            Kind::Conv2D => "conv2d",
            Kind::SeparableConv2D => "separable_conv2d",
            Kind::DepthwiseConv2D => "depthwise_conv2d",
            Kind::BatchNorm => "batch_normalization",
        }
    }
}

/// One variable: canonical name, name in Keras files, shape.
#[derive(Debug, Clone)]
pub(crate) struct SpecVar {
    pub canonical: &'static str,
    pub keras: &'static str,
    pub shape: Vec<usize>,
}

#[derive(Debug, Clone)]
pub(crate) struct SpecLayer {
    /// Canonical layer name; tensors are `<canonical><sep><var>`.
    pub canonical: String,
    /// Keras layer name. `None` for layers Keras auto-names (`conv2d_3`,
    /// `batch_normalization_1`): their numbers depend on what else the
    /// session built, so they can only be matched by position.
    pub keras: Option<String>,
    pub kind: Kind,
    pub vars: Vec<SpecVar>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Xception,
    MobileNetV2,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Xception => "Xception",
            Arch::MobileNetV2 => "MobileNetV2",
        }
    }

    /// Separator between layer and variable in canonical names.
    pub(crate) fn sep(self) -> char {
        match self {
            Arch::Xception => '.',
            Arch::MobileNetV2 => '/',
        }
    }

    pub(crate) fn layers(self) -> Vec<SpecLayer> {
        match self {
            Arch::Xception => xception_layers(),
            Arch::MobileNetV2 => mobilenet_v2_layers(),
        }
    }

    /// Flat `(canonical tensor name, shape)` list.
    pub fn spec(self) -> Vec<(String, Vec<usize>)> {
        let sep = self.sep();
        self.layers()
            .into_iter()
            .flat_map(|l| {
                l.vars
                    .into_iter()
                    .map(move |v| (format!("{}{sep}{}", l.canonical, v.canonical), v.shape))
            })
            .collect()
    }
}

/// Every tensor of `keras.applications.Xception(include_top=False)`.
pub fn xception_spec() -> Vec<(String, Vec<usize>)> {
    Arch::Xception.spec()
}

/// Every tensor of the TF-Hub / TF-slim MobileNetV2 (alpha 1.0) feature extractor.
pub fn mobilenet_v2_spec() -> Vec<(String, Vec<usize>)> {
    Arch::MobileNetV2.spec()
}

fn var(canonical: &'static str, keras: &'static str, shape: Vec<usize>) -> SpecVar {
    SpecVar {
        canonical,
        keras,
        shape,
    }
}

fn layer(canonical: String, keras: Option<String>, kind: Kind, vars: Vec<SpecVar>) -> SpecLayer {
    SpecLayer {
        canonical,
        keras,
        kind,
        vars,
    }
}

fn bn_vars(c: usize) -> Vec<SpecVar> {
    ["gamma", "beta", "moving_mean", "moving_variance"]
        .into_iter()
        .map(|v| var(v, v, vec![c]))
        .collect()
}

// ---------------------------------------------------------------- Xception

fn x_conv(name: &str, k: usize, cin: usize, cout: usize) -> SpecLayer {
    let v = vec![var("kernel", "kernel", vec![k, k, cin, cout])];
    layer(name.into(), Some(name.into()), Kind::Conv2D, v)
}

fn x_sep(name: &str, cin: usize, cout: usize) -> SpecLayer {
    let v = vec![
        var("depthwise_kernel", "depthwise_kernel", vec![3, 3, cin, 1]),
        var(
            "pointwise_kernel",
            "pointwise_kernel",
            vec![1, 1, cin, cout],
        ),
    ];
    layer(name.into(), Some(name.into()), Kind::SeparableConv2D, v)
}

fn x_bn(name: &str, c: usize) -> SpecLayer {
    layer(name.into(), Some(name.into()), Kind::BatchNorm, bn_vars(c))
}

/// The unnamed 1x1 shortcut conv + BN of a downsampling block.
fn x_residual(block: usize, cin: usize, cout: usize, out: &mut Vec<SpecLayer>) {
    let v = vec![var("kernel", "kernel", vec![1, 1, cin, cout])];
    out.push(layer(
        format!("block{block}_residual_conv"),
        None,
        Kind::Conv2D,
        v,
    ));
    out.push(layer(
        format!("block{block}_residual_bn"),
        None,
        Kind::BatchNorm,
        bn_vars(cout),
    ));
}

fn x_sep_bn(name: &str, cin: usize, cout: usize, out: &mut Vec<SpecLayer>) {
    out.push(x_sep(name, cin, cout));
    out.push(x_bn(&format!("{name}_bn"), cout));
}

fn xception_layers() -> Vec<SpecLayer> {
    let mut l = vec![
        x_conv("block1_conv1", 3, 3, 32),
        x_bn("block1_conv1_bn", 32),
        x_conv("block1_conv2", 3, 32, 64),
        x_bn("block1_conv2_bn", 64),
    ];
    // Entry flow: two sepconvs, then (in model.layers order) the shortcut.
    for (block, cin, cout) in [(2, 64, 128), (3, 128, 256), (4, 256, 728)] {
        x_sep_bn(&format!("block{block}_sepconv1"), cin, cout, &mut l);
        x_sep_bn(&format!("block{block}_sepconv2"), cout, cout, &mut l);
        x_residual(block, cin, cout, &mut l);
    }
    // Middle flow: 8 blocks of 3 sepconvs at 728.
    for block in 5..=12 {
        for i in 1..=3 {
            x_sep_bn(&format!("block{block}_sepconv{i}"), 728, 728, &mut l);
        }
    }
    // Exit flow.
    x_sep_bn("block13_sepconv1", 728, 728, &mut l);
    x_sep_bn("block13_sepconv2", 728, 1024, &mut l);
    x_residual(13, 728, 1024, &mut l);
    x_sep_bn("block14_sepconv1", 1024, 1536, &mut l);
    x_sep_bn("block14_sepconv2", 1536, 2048, &mut l);
    l
}

// ------------------------------------------------------------- MobileNetV2

/// Output channels of the 17 inverted-residual blocks (alpha 1.0):
/// (t,c,n) = (1,16,1) (6,24,2) (6,32,3) (6,64,4) (6,96,3) (6,160,3) (6,320,1).
const MBV2_BLOCK_OUT: [usize; 17] = [
    16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320,
];

/// A slim conv (`weights`) + its `BatchNorm`, with the matching
/// `keras.applications.MobileNetV2` layer names.
fn m_conv_bn(
    scope: &str,
    keras: &str,
    keras_bn: &str,
    shape: Vec<usize>,
    out: &mut Vec<SpecLayer>,
) {
    let c = shape[3];
    let v = vec![var("weights", "kernel", shape)];
    out.push(layer(
        format!("MobilenetV2/{scope}"),
        Some(keras.into()),
        Kind::Conv2D,
        v,
    ));
    out.push(m_bn(scope, keras_bn, c));
}

fn m_bn(scope: &str, keras_bn: &str, c: usize) -> SpecLayer {
    let name = format!("MobilenetV2/{scope}/BatchNorm");
    layer(name, Some(keras_bn.into()), Kind::BatchNorm, bn_vars(c))
}

fn mobilenet_v2_layers() -> Vec<SpecLayer> {
    let mut l = Vec::new();
    m_conv_bn("Conv", "Conv1", "bn_Conv1", vec![3, 3, 3, 32], &mut l);
    let mut cin = 32;
    for (i, &cout) in MBV2_BLOCK_OUT.iter().enumerate() {
        let (scope, keras) = if i == 0 {
            ("expanded_conv".to_string(), "expanded_conv_".to_string())
        } else {
            (format!("expanded_conv_{i}"), format!("block_{i}_"))
        };
        let hidden = if i == 0 { cin } else { cin * 6 };
        if i > 0 {
            let (k, kb) = (format!("{keras}expand"), format!("{keras}expand_BN"));
            m_conv_bn(
                &format!("{scope}/expand"),
                &k,
                &kb,
                vec![1, 1, cin, hidden],
                &mut l,
            );
        }
        let dw = vec![var(
            "depthwise_weights",
            "depthwise_kernel",
            vec![3, 3, hidden, 1],
        )];
        let dw_name = format!("MobilenetV2/{scope}/depthwise");
        l.push(layer(
            dw_name,
            Some(format!("{keras}depthwise")),
            Kind::DepthwiseConv2D,
            dw,
        ));
        l.push(m_bn(
            &format!("{scope}/depthwise"),
            &format!("{keras}depthwise_BN"),
            hidden,
        ));
        let (k, kb) = (format!("{keras}project"), format!("{keras}project_BN"));
        m_conv_bn(
            &format!("{scope}/project"),
            &k,
            &kb,
            vec![1, 1, hidden, cout],
            &mut l,
        );
        cin = cout;
    }
    m_conv_bn(
        "Conv_1",
        "Conv_1",
        "Conv_1_bn",
        vec![1, 1, 320, 1280],
        &mut l,
    );
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let x = xception_spec();
        assert_eq!(x.len(), 234);
        let params: usize = x.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(params, 20_861_480);
        let m = mobilenet_v2_spec();
        assert_eq!(m.len(), 260);
        let params: usize = m.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(params, 2_257_984);
    }

    #[test]
    fn names_unique() {
        for spec in [xception_spec(), mobilenet_v2_spec()] {
            let set: std::collections::BTreeSet<_> = spec.iter().map(|(n, _)| n).collect();
            assert_eq!(set.len(), spec.len());
        }
    }
}
