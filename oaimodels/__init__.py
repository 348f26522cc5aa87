"""Model layer of the `oai` toolkit: networks (``oaimodels.networks``), data, training, evaluation."""
