"""DoReFa's activation init, paper clip [0, 1] against data clips (notes/initialisation.md).

``python -m benchmarks.dorefa_init`` (MNIST: keras.datasets, or mnist.npz under ``QRESEARCH_DATA_DIR``): one
LeNet-5 trained 4 epochs on 6000 images, then the dorefa preset at 8/4/2 bits with ``activations.init`` paper, mse
and max: PTQ and 1 QAT epoch (Adam 5e-4), the same calibration images, seed 0.
"""
from qresearch import data, models, quantize, schemes
from qresearch._compat import keras
from qresearch.config import with_bits


def _compiled(model, lr):
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def main():
    ds = data.load_dataset({"name": "mnist", "train_samples": 6000, "test_samples": 2000})
    keras.utils.set_random_seed(0)
    model = _compiled(models.build_model({"name": "lenet5"}, ds.input_shape, 10), 1e-3)
    model.fit(ds.x_train, ds.y_train, epochs=4, batch_size=64, verbose=0)
    print(f"float {100 * model.evaluate(ds.x_test, ds.y_test, verbose=0)[1]:.1f}")
    base = schemes.get("dorefa").to_dict()
    print("| bits | activations init | PTQ | QAT |\n|---:|---|---:|---:|")
    for bits in (8, 4, 2):
        for init in ("paper", "mse", "max"):
            keras.utils.set_random_seed(0)
            q = _compiled(quantize(model, with_bits(dict(base, activations=dict(base["activations"], init=init)), bits),
                                   calibration_data=ds.x_train[:256]), 5e-4)
            ptq = q.evaluate(ds.x_test, ds.y_test, verbose=0)[1]
            q.fit(ds.x_train, ds.y_train, epochs=1, batch_size=64, verbose=0)
            qat = q.evaluate(ds.x_test, ds.y_test, verbose=0)[1]
            print(f"| {bits} | {init} | {100 * ptq:.1f} | {100 * qat:.1f} |", flush=True)


if __name__ == "__main__":
    main()
