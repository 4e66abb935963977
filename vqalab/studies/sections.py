"""The ``data`` section a study's runs use, from its notebook's parameters. Needs no torch: the
report shows each study's data set, and checks that it is there, before any notebook runs."""

from __future__ import annotations

SYNTHETIC_FACES = "synthetic_faces"
# The FER notebooks' parameters that shape their data section (``fer_data_section``).
FER_DATA_PARAMS = ("img_size", "num_train", "num_val", "face_options")


def fer_data_section(*, dataset: str, dataset_kwargs: dict, img_size: int, num_train: int, num_val: int,
                     face_options: dict) -> dict:
    """The ``data`` section of a FER study's runs.

    ``num_train``, ``num_val`` and ``face_options`` size and shape the synthetic faces only;
    ``dataset_kwargs`` go to the builder of any data set (e.g. ``root`` of ``rafdb``).
    """
    if dataset == SYNTHETIC_FACES:
        return {"name": dataset, "num_train": num_train, "num_val": num_val, "image_size": img_size,
                **face_options, **dataset_kwargs}
    return {"name": dataset, "image_size": img_size, **dataset_kwargs}


def study_data_section(parameters: dict) -> dict:
    """The data section of a study whose notebook takes these parameters (its values): a FER
    study's (``fer_data_section``) when it takes them all, else ``{"name": dataset, **dataset_kwargs}``."""
    kwargs = parameters.get("dataset_kwargs") or {}
    if all(key in parameters for key in FER_DATA_PARAMS):
        return fer_data_section(dataset=parameters["dataset"], dataset_kwargs=kwargs,
                                **{key: parameters[key] for key in FER_DATA_PARAMS})
    return {"name": parameters["dataset"], **kwargs}
