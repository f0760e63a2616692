// The structure of a network definition (network_internal.hpp): names, inputs, output, the
// topological order, cycles and unused nodes, checked from the JSON alone.
#include <algorithm>
#include <cctype>
#include <map>
#include <set>

#include "flowlab/errors.hpp"
#include "graph/json_internal.hpp"
#include "graph/network_internal.hpp"

namespace flowlab::network_detail {

using nlohmann::json;

std::string join(const std::vector<std::string>& v, const char* sep) {
    std::string out;
    for (std::size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + v[i];
    return out;
}

bool valid_name(const std::string& n) {
    if (n.empty()) return false;
    for (char c : n)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') return false;
    return true;
}

namespace {
std::vector<std::string> node_names(const Structure& g) {
    std::vector<std::string> out;
    for (const auto& n : g.nodes) out.push_back(n.name);
    return out;
}
}  // namespace

Structure analyse(const Params& def, const std::vector<std::string>& input_names, bool check_unused_inputs) {
    Structure g;
    g.input_names = input_names;
    const std::string example =
        "e.g. [{\"name\": \"h\", \"type\": \"linear\", \"inputs\": [\"x\"], \"out\": 64}, ...]";
    if (!def.has("nodes"))
        throw ConfigError(def.where() + ": missing \"nodes\": the network's list of nodes, " + example);
    const std::vector<Params> items = def.get_object_list("nodes");
    if (items.empty()) throw ConfigError(def.where("nodes") + ": the network has no nodes; list them, " + example);

    // Names.
    std::map<std::string, int> by_name;
    for (std::size_t i = 0; i < items.size(); ++i) {
        const Params& p = items[i];
        if (!p.has("name"))
            throw ConfigError(p.where() + ": a node needs a \"name\" (other nodes read it by that name in their "
                                          "\"inputs\", and its parameters are saved under it)");
        const std::string name = p.get_string("name");
        if (!valid_name(name))
            throw ConfigError(p.where("name") + ": invalid node name '" + name +
                              "': use letters, digits, '_' and '-' (the name is part of its parameters' names)");
        if (std::find(input_names.begin(), input_names.end(), name) != input_names.end())
            throw ConfigError(p.where("name") + ": duplicate name '" + name + "': it is the network's input '" + name +
                              "'; rename the node");
        auto [it, fresh] = by_name.emplace(name, static_cast<int>(i));
        if (!fresh)
            throw ConfigError(p.where("name") + ": duplicate node name '" + name + "' (node " +
                              items[static_cast<std::size_t>(it->second)].pointer() +
                              " has it too); node names must be unique");
        g.nodes.push_back({p, name, {}});
    }

    // Output.
    if (!def.has("output"))
        throw ConfigError(def.where() + ": missing \"output\": the name of the node whose result the network "
                                        "returns (e.g. \"output\": \"" + g.nodes.back().name + "\")");
    {
        const std::string out = def.get_string("output");
        auto it = by_name.find(out);
        if (it == by_name.end()) {
            if (std::find(input_names.begin(), input_names.end(), out) != input_names.end())
                throw ConfigError(def.where("output") + ": the output is the network's input '" + out +
                                  "'; it must be a node (whose result the network returns)");
            const std::vector<std::string> names = node_names(g);
            const std::string dym = did_you_mean(out, names);
            throw ConfigError(def.where("output") + ": output '" + out + "' names no node" +
                              (dym.empty() ? "" : "; did you mean '" + dym + "'?") + " (nodes: " + join(names) + ")");
        }
        g.output = it->second;
    }

    // Inputs: every name a node reads must exist.
    const int n_in = g.n_inputs();
    for (auto& node : g.nodes) {
        const Params& p = node.p;
        if (!p.has("inputs"))
            throw ConfigError(p.where() + ": node '" + node.name + "' has no \"inputs\": list what it reads " +
                              "(other nodes, or the network's inputs: " + join(input_names) + ")");
        const json& list = params_json(p)["inputs"];
        if (!list.is_array())
            throw ConfigError(p.where("inputs") + ": expected a list of names, got " + describe_json(list));
        if (list.empty())
            throw ConfigError(p.where("inputs") + ": node '" + node.name + "' reads nothing; list its inputs (" +
                              "nodes, or the network's inputs: " + join(input_names) + ")");
        for (std::size_t j = 0; j < list.size(); ++j) {
            const std::string at = p.where("inputs") + "/" + std::to_string(j);
            if (!list[j].is_string())
                throw ConfigError(at + ": expected a node or input name, got " + describe_json(list[j]));
            const std::string ref = list[j].get<std::string>();
            auto in = std::find(input_names.begin(), input_names.end(), ref);
            if (in != input_names.end()) {
                node.inputs.push_back(static_cast<int>(in - input_names.begin()));
                continue;
            }
            auto it = by_name.find(ref);
            if (it != by_name.end()) {
                node.inputs.push_back(n_in + it->second);
                continue;
            }
            if (ref == "context")
                throw ConfigError(at + ": node '" + node.name + "' reads 'context', but this network has no context "
                                  "input (the flow is unconditional; its inputs: " + join(input_names) + ")");
            std::vector<std::string> known = input_names;
            for (const auto& n : g.nodes) known.push_back(n.name);
            const std::string dym = did_you_mean(ref, known);
            throw ConfigError(at + ": node '" + node.name + "' reads '" + ref + "', which names no node and no " +
                              "network input" + (dym.empty() ? "" : "; did you mean '" + dym + "'?") +
                              " (network inputs: " + join(input_names) + "; nodes: " + join(node_names(g)) + ")");
        }
    }

    // Order: Kahn's algorithm, taking the first listed ready node each time, so that a listing
    // already in order is kept as it is (it fixes the order parameters are drawn in).
    const std::size_t n = g.nodes.size();
    std::vector<int> pending(n, 0);
    std::vector<std::vector<int>> readers(n);
    for (std::size_t i = 0; i < n; ++i)
        for (int v : g.nodes[i].inputs)
            if (v >= n_in) {
                ++pending[i];
                readers[static_cast<std::size_t>(v - n_in)].push_back(static_cast<int>(i));
            }
    std::set<int> ready;
    for (std::size_t i = 0; i < n; ++i)
        if (pending[i] == 0) ready.insert(static_cast<int>(i));
    while (!ready.empty()) {
        const int i = *ready.begin();
        ready.erase(ready.begin());
        g.order.push_back(i);
        for (int r : readers[static_cast<std::size_t>(i)])
            if (--pending[static_cast<std::size_t>(r)] == 0) ready.insert(r);
    }
    if (g.order.size() < n) {
        // Every node left waits on another node left: walk back along such inputs until a node
        // repeats; the walk from its first visit is a cycle.
        int u = 0;
        while (pending[static_cast<std::size_t>(u)] == 0) ++u;
        std::vector<int> path;
        std::map<int, std::size_t> seen;
        while (!seen.count(u)) {
            seen[u] = path.size();
            path.push_back(u);
            for (int v : g.nodes[static_cast<std::size_t>(u)].inputs)
                if (v >= n_in && pending[static_cast<std::size_t>(v - n_in)] > 0) {
                    u = v - n_in;
                    break;
                }
        }
        std::vector<int> cycle(path.begin() + static_cast<std::ptrdiff_t>(seen[u]), path.end());
        std::string text;
        for (std::size_t k = 0; k < cycle.size(); ++k) {
            const auto& a = g.nodes[static_cast<std::size_t>(cycle[k])].name;
            const auto& b = g.nodes[static_cast<std::size_t>(cycle[(k + 1) % cycle.size()])].name;
            text += (k ? ", " : "") + a + " reads " + b;
        }
        std::vector<std::string> names;
        for (int c : cycle) names.push_back("'" + g.nodes[static_cast<std::size_t>(c)].name + "'");
        throw ConfigError(g.nodes[static_cast<std::size_t>(cycle.front())].p.where("inputs") + ": the nodes " +
                          join(names) + " form a cycle (" + text + "); a node cannot depend on its own result: " +
                          "break the cycle");
    }

    // Unused: what the output does not depend on.
    std::vector<char> live(static_cast<std::size_t>(n_in) + n, 0);
    live[static_cast<std::size_t>(n_in + g.output)] = 1;
    for (auto it = g.order.rbegin(); it != g.order.rend(); ++it)
        if (live[static_cast<std::size_t>(n_in + *it)])
            for (int v : g.nodes[static_cast<std::size_t>(*it)].inputs) live[static_cast<std::size_t>(v)] = 1;
    const std::string& out_name = g.nodes[static_cast<std::size_t>(g.output)].name;
    for (std::size_t i = 0; i < n; ++i)
        if (!live[static_cast<std::size_t>(n_in) + i])
            throw ConfigError(g.nodes[i].p.where() + ": node '" + g.nodes[i].name + "' is unused: its result does "
                              "not reach the output '" + out_name + "' (nothing the output depends on reads it); " +
                              "remove it, or feed it into a node that does");
    if (check_unused_inputs)
        for (int v = 0; v < n_in; ++v)
            if (!live[static_cast<std::size_t>(v)])
                throw ConfigError(def.where("nodes") + ": the network never uses its input '" + g.value_name(v) +
                                  "' (it does not reach the output '" + out_name + "')" +
                                  (g.value_name(v) == "context"
                                       ? ": the flow's context would be ignored; read it, e.g. concat it with x"
                                       : ": the network would ignore what it is given; read it in some node"));
    return g;
}

}  // namespace flowlab::network_detail
