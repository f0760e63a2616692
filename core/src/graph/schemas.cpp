#include "graph/schemas.hpp"

#include "flowlab/version.hpp"

namespace flowlab::graph {

namespace {

ParamSpec plugins_spec() {
    ParamSpec s;
    s.name = "plugins";
    s.type = ParamType::any;
    // Which shipped plugins a config without "plugins" loads is the plugin tier's choice, made
    // in the build (FLOWLAB_DEFAULT_PLUGINS), not the core's.
    s.default_json = FLOWLAB_DEFAULT_PLUGINS_JSON;
    s.doc = "plugin names (libflowlab_<name>.so) or paths to load";
    return s;
}

// A key of any JSON type that may be left out (null); its reader checks the type.
ParamSpec optional_any(std::string name, std::string doc) {
    ParamSpec s = param_required(std::move(name), ParamType::any, std::move(doc));
    s.default_json = "null";
    s.nullable = true;
    return s;
}

}  // namespace

// The top level of an experiment file. Nested objects are validated against their own
// schemas (the registry's, or the ones below) when they are built.
Schema experiment_schema() {
    return {
        param_int("flowlab", 1, "config format version").range(1, 1),
        param_string("name", "experiment", "name of the experiment (default run directory runs/<name>)"),
        param_int("seed", 0, "seed of the model init, batch order and dequantisation noise").min(0),
        plugins_spec(),
        param_required("data", ParamType::object, "dataset: {\"type\": ..., parameters}"),
        param_required("model", ParamType::object, "flow: {\"base\", \"dequantizer\", \"layers\" or \"graph\"}"),
        param_object("train", "{}", "training loop settings"),
        param_object("eval", "{}", "evaluation settings"),
        param_string("output", "", "run directory (default runs/<name>)"),
    };
}

Schema model_schema() {
    return {
        param_object("base", "null", "base distribution (null: the loaded plugins' default, see flowlab list)")
            .allow_null(),
        param_object("dequantizer", "null", "dequantizer for discrete data (null = none)").allow_null(),
        optional_any("layers", "the flow as a chain: a list of layers or {\"repeat\": N, \"layers\": [...]} blocks "
                               "(give this or \"graph\")"),
        param_object("graph", "null", "the flow as a graph: {\"nodes\": [{\"name\", \"type\", \"input\", ...}], "
                                      "\"outputs\": [...]} (give this or \"layers\"; docs/GRAPHS.md)")
            .allow_null(),
        param_object("networks", "null", "named network definitions ({\"name\": {\"nodes\": [...], \"output\": ...}}) "
                                         "that conditioners and network nodes refer to")
            .allow_null(),
    };
}

Schema train_schema() {
    return {
        param_int("batch_size", 256, "training batch size").min(1),
        param_int("steps", 1000, "optimizer steps").min(0),
        param_number("clip_grad_norm", 1.0, "clip the global gradient 2-norm to this (0 = off)").min(0),
        param_object("optimizer", "null", "optimizer (null: the loaded plugins' default, see flowlab list)").allow_null(),
        param_object("schedule", "null", "learning-rate schedule (null: the loaded plugins' default)").allow_null(),
        param_int("eval_every", 0, "evaluate on the test split every N steps (0 = at the end only)").min(0),
        param_int("log_every", 100, "log the training loss every N steps").min(1),
        param_int("threads", 0, "threads for GEMMs and element-wise kernels (0 = all cores); with replicas, "
                                "shared among them").range(0, 4096),
        param_int("replicas", 1, "copies of the model on threads of this process, each taking its share of every batch "
                                 "(data parallel without MPI: faster for convolutional flows on a few cores; the "
                                 "gradient sums change order, so results differ in the last bits)").range(1, 4096),
        param_bool("adaptive_threads", true, "with more than one thread, measure now and then whether one thread is "
                                             "faster (a busy machine) and use it while it is; results are the same "
                                             "bits either way"),
        param_int("max_bad_steps", 20, "abort after this many consecutive non-finite steps").min(1),
        param_int("checkpoint_every", 1000, "write a checkpoint every N steps (and always at the end)").min(1),
        param_number("ema_decay", 0.0, "exponential moving average of the parameters (bias-corrected), used "
                                       "for evaluation and sampling (0 = off; e.g. 0.999)").range(0, 1),
        param_int("early_stopping_patience", 0, "stop when the validation NLL has not improved for this many "
                                                "evaluations (0 = off; needs a validation split and eval_every)").min(0),
        param_bool("check_layers", true, "before the first step and at every evaluation, check each layer on the "
                                         "first training batch: forward(inverse(x)) = x and the log-dets cancel; a "
                                         "failure stops the run with exit code 8"),
        param_object("distributed", "{}", "data-parallel runs under mpirun (docs/DISTRIBUTED.md): timeout_seconds, "
                                          "check_every, bucket_mb, overlap"),
    };
}

Schema distributed_schema() {
    return {
        param_number("timeout_seconds", 300.0, "how long a rank waits for the others in a collective (a gradient "
                                               "reduction, a broadcast) before the job is aborted with exit code 11, "
                                               "naming the ranks that did not join: a crashed or hung rank")
            .min(0.1),
        param_int("check_every", 100, "every N steps the ranks verify that they hold the same parameters (a "
                                      "checksum); 0 = at the start and the end only")
            .min(0),
        param_number("bucket_mb", 1.0, "gradients are summed across the ranks in buckets of about this many MB, each "
                                       "as soon as the backward pass has completed it")
            .range(0.001, 1024),
        param_bool("overlap", true, "sum each bucket while the backward pass goes on; false sums them all after the "
                                    "pass (to measure what the overlap gains)"),
    };
}


Schema eval_schema() {
    return {
        param_int("batch_size", 2000, "evaluation batch size").min(1),
        param_int("samples", 1000, "samples drawn at the end of a run (written to samples.csv)").min(0),
        param_number("temperature", 1.0, "sampling temperature").min(0),
        param_int("importance_samples", 1, "importance samples per example for the test bound of a "
                                           "stochastic dequantizer, uniform or variational (1 = the ELBO)").min(1),
    };
}

Schema split_schema() {
    return {
        param_int("keep", 0, "channels (features) kept for the rest of the chain; 0 = half").min(0),
        param_object("prior", "null", "conditioner for a learned Gaussian prior of the factored part "
                                      "given the kept part (null = standard normal)").allow_null(),
    };
}

}  // namespace flowlab::graph
