#include "flowlab/report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "flowlab/architecture.hpp"
#include "flowlab/checkpoint.hpp"
#include "flowlab/errors.hpp"

namespace flowlab {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

struct Series {
    std::string label, color;
    std::vector<std::pair<double, double>> points;
};

std::string read_all(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

std::string esc(const std::string& s) {
    std::string o;
    for (char c : s) {
        if (c == '<')
            o += "&lt;";
        else if (c == '>')
            o += "&gt;";
        else if (c == '&')
            o += "&amp;";
        else if (c == '"')
            o += "&quot;";
        else
            o += c;
    }
    return o;
}

std::string num(double v) {
    char b[32];
    std::snprintf(b, sizeof b, "%.4g", v);
    return b;
}

std::string base64(const std::string& in) {
    static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    std::size_t i = 0;
    for (; i + 2 < in.size(); i += 3) {
        unsigned v = (unsigned char)in[i] << 16 | (unsigned char)in[i + 1] << 8 | (unsigned char)in[i + 2];
        out += t[v >> 18];
        out += t[(v >> 12) & 63];
        out += t[(v >> 6) & 63];
        out += t[v & 63];
    }
    if (i + 1 == in.size()) {
        unsigned v = (unsigned char)in[i] << 16;
        out += t[v >> 18];
        out += t[(v >> 12) & 63];
        out += "==";
    } else if (i + 2 == in.size()) {
        unsigned v = (unsigned char)in[i] << 16 | (unsigned char)in[i + 1] << 8;
        out += t[v >> 18];
        out += t[(v >> 12) & 63];
        out += t[(v >> 6) & 63];
        out += '=';
    }
    return out;
}

// A line chart with axes, ticks and a legend, as inline SVG.
std::string line_chart(const std::string& title, const std::string& ylabel, const std::vector<Series>& series) {
    const double W = 640, H = 300, L = 64, R = 16, T = 28, B = 40;
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    std::size_t n = 0;
    for (const auto& s : series)
        for (auto [x, y] : s.points) {
            if (!std::isfinite(y)) continue;
            x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
            ++n;
        }
    std::ostringstream o;
    o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "' class='chart'>";
    o << "<text x='" << W / 2 << "' y='18' text-anchor='middle' font-weight='bold'>" << esc(title) << "</text>";
    if (n == 0) {
        o << "<text x='" << W / 2 << "' y='" << H / 2 << "' text-anchor='middle'>no data</text></svg>";
        return o.str();
    }
    if (x1 == x0) x1 = x0 + 1;
    if (y1 == y0) y1 = y0 + 1, y0 -= 1;
    double pad = 0.05 * (y1 - y0);
    y0 -= pad, y1 += pad;
    auto sx = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
    auto sy = [&](double y) { return H - B - (y - y0) / (y1 - y0) * (H - T - B); };
    o << "<rect x='" << L << "' y='" << T << "' width='" << W - L - R << "' height='" << H - T - B
      << "' fill='none' stroke='#999'/>";
    for (int i = 0; i <= 4; ++i) {
        double y = y0 + (y1 - y0) * i / 4.0, x = x0 + (x1 - x0) * i / 4.0;
        o << "<line x1='" << L << "' x2='" << W - R << "' y1='" << sy(y) << "' y2='" << sy(y) << "' stroke='#eee'/>";
        o << "<text x='" << L - 4 << "' y='" << sy(y) + 4 << "' text-anchor='end' font-size='11'>" << num(y) << "</text>";
        o << "<text x='" << sx(x) << "' y='" << H - B + 16 << "' text-anchor='middle' font-size='11'>" << num(x)
          << "</text>";
    }
    o << "<text x='" << (L + W - R) / 2 << "' y='" << H - 6 << "' text-anchor='middle' font-size='12'>step</text>";
    o << "<text x='14' y='" << (T + H - B) / 2 << "' text-anchor='middle' font-size='12' transform='rotate(-90 14 "
      << (T + H - B) / 2 << ")'>" << esc(ylabel) << "</text>";
    double ly = T + 14;
    for (const auto& s : series) {
        if (s.points.empty()) continue;
        o << "<polyline fill='none' stroke='" << s.color << "' stroke-width='1.8' points='";
        for (auto [x, y] : s.points)
            if (std::isfinite(y)) o << sx(x) << "," << sy(y) << " ";
        o << "'/>";
        if (s.points.size() < 30)
            for (auto [x, y] : s.points)
                if (std::isfinite(y)) o << "<circle cx='" << sx(x) << "' cy='" << sy(y) << "' r='2.5' fill='" << s.color << "'/>";
        o << "<rect x='" << W - R - 150 << "' y='" << ly - 9 << "' width='10' height='10' fill='" << s.color << "'/>";
        o << "<text x='" << W - R - 135 << "' y='" << ly << "' font-size='12'>" << esc(s.label) << "</text>";
        ly += 16;
    }
    o << "</svg>";
    return o.str();
}

std::vector<std::vector<double>> read_csv(const fs::path& p, std::size_t max_rows) {
    std::vector<std::vector<double>> rows;
    std::ifstream f(p);
    std::string line;
    while (rows.size() < max_rows && std::getline(f, line)) {
        std::vector<double> r;
        std::stringstream ss(line);
        std::string cell;
        try {
            while (std::getline(ss, cell, ',')) r.push_back(std::stod(cell));
        } catch (...) {
            continue;  // a header line
        }
        if (!r.empty()) rows.push_back(r);
    }
    return rows;
}

// Scatter of 2-D samples against data, and the model density on a grid (density.csv: x,y,logp).
std::string plots_2d(const fs::path& dir) {
    auto samples = read_csv(dir / "samples.csv", 3000);
    auto data = read_csv(dir / "data.csv", 3000);
    auto dens = read_csv(dir / "density.csv", 1 << 20);
    if (samples.empty() || samples[0].size() != 2) return "";
    double lo0 = INFINITY, hi0 = -INFINITY, lo1 = INFINITY, hi1 = -INFINITY;
    for (const auto* set : {&data, &samples})
        for (const auto& r : *set)
            if (r.size() == 2 && std::isfinite(r[0]) && std::isfinite(r[1]))
                lo0 = std::min(lo0, r[0]), hi0 = std::max(hi0, r[0]), lo1 = std::min(lo1, r[1]), hi1 = std::max(hi1, r[1]);
    if (!dens.empty()) {
        lo0 = hi0 = dens[0][0];
        lo1 = hi1 = dens[0][1];
        for (const auto& r : dens) lo0 = std::min(lo0, r[0]), hi0 = std::max(hi0, r[0]), lo1 = std::min(lo1, r[1]), hi1 = std::max(hi1, r[1]);
    }
    const double S = 300;
    auto px = [&](double v) { return (v - lo0) / (hi0 - lo0 + 1e-12) * S; };
    auto py = [&](double v) { return S - (v - lo1) / (hi1 - lo1 + 1e-12) * S; };
    std::ostringstream o;
    auto scatter = [&](const std::string& title, const std::vector<std::vector<double>>& pts, const char* color) {
        o << "<figure><svg xmlns='http://www.w3.org/2000/svg' width='" << S << "' height='" << S
          << "' class='plot'><rect width='100%' height='100%' fill='white' stroke='#999'/>";
        for (const auto& r : pts)
            if (r.size() == 2 && std::isfinite(r[0]) && std::isfinite(r[1]))
                o << "<circle cx='" << px(r[0]) << "' cy='" << py(r[1]) << "' r='1.2' fill='" << color << "' fill-opacity='0.5'/>";
        o << "</svg><figcaption>" << esc(title) << "</figcaption></figure>";
    };
    if (!data.empty()) scatter("test data", data, "#555");
    scatter("samples from the model", samples, "#1f77b4");
    if (!dens.empty()) {
        // Cells of a regular grid, shaded by density (exp of log p, scaled to the maximum).
        std::vector<double> xs, ys;
        for (const auto& r : dens) xs.push_back(r[0]), ys.push_back(r[1]);
        std::sort(xs.begin(), xs.end());
        xs.erase(std::unique(xs.begin(), xs.end()), xs.end());
        std::sort(ys.begin(), ys.end());
        ys.erase(std::unique(ys.begin(), ys.end()), ys.end());
        double cw = S / std::max<std::size_t>(1, xs.size()), ch = S / std::max<std::size_t>(1, ys.size());
        double mx = -INFINITY;
        for (const auto& r : dens)
            if (std::isfinite(r[2])) mx = std::max(mx, r[2]);
        o << "<figure><svg xmlns='http://www.w3.org/2000/svg' width='" << S << "' height='" << S << "' class='plot'>";
        for (const auto& r : dens) {
            double v = std::isfinite(r[2]) ? std::exp(r[2] - mx) : 0.0;
            int c = static_cast<int>(255 * (1.0 - v));
            o << "<rect x='" << px(r[0]) - cw / 2 << "' y='" << py(r[1]) - ch / 2 << "' width='" << cw + 0.5
              << "' height='" << ch + 0.5 << "' fill='rgb(" << c << "," << c << ",255)'/>";
        }
        o << "</svg><figcaption>model density p(x)</figcaption></figure>";
    }
    return o.str();
}

}  // namespace

namespace {

struct Metrics {
    Series loss{"train loss (nats)", "#1f77b4", {}}, test_nll{"test NLL (nats)", "#d62728", {}},
        valid_nll{"valid NLL (nats)", "#2ca02c", {}}, test_bpd{"test bits/dim", "#d62728", {}};
};

// metrics.jsonl as chart series; also writes its numbers as metrics.csv beside it.
Metrics read_metrics(const fs::path& dir) {
    const fs::path path = dir / "metrics.jsonl";
    if (!fs::exists(path)) throw IoError(path.string() + ": no metrics in this run directory (is it a flowlab run?)");
    Metrics m;
    const std::pair<const char*, Series*> charted[] = {
        {"loss", &m.loss}, {"test_nll", &m.test_nll}, {"valid_nll", &m.valid_nll}, {"test_bpd", &m.test_bpd}};
    const char* const columns[] = {"step", "loss", "lr", "grad_norm", "samples_per_s", "test_nll", "test_bpd", "valid_nll"};
    std::ostringstream csv;
    csv << "step,loss,lr,grad_norm,samples_per_s,test_nll,test_bpd,valid_nll\n";
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
        json j;
        try {
            j = json::parse(line);
        } catch (...) {
            continue;  // a line cut short by a crash
        }
        if (!j.contains("step") || !j["step"].is_number()) continue;
        const double step = j["step"].get<double>();
        for (const auto& [key, series] : charted)
            if (j.contains(key) && j[key].is_number()) series->points.push_back({step, j[key].get<double>()});
        for (std::size_t c = 0; c < std::size(columns); ++c) {
            if (c) csv << ",";
            if (j.contains(columns[c]) && j[columns[c]].is_number()) csv << num(j[columns[c]].get<double>());
        }
        csv << "\n";
    }
    write_file_atomic((dir / "metrics.csv").string(), csv.str());
    return m;
}

// The run's name: the config's "name", else the folder's.
std::string run_name(const fs::path& dir, const std::string& config) {
    try {
        json c = json::parse(config);
        if (c.contains("config") && c["config"].contains("name")) return c["config"]["name"].get<std::string>();
    } catch (...) {
    }
    return dir.filename().string();
}

void summary_table(std::ostringstream& h, const std::string& summary) {
    if (summary.empty()) return;
    h << "<h2>Summary</h2><table>";
    try {
        json s = json::parse(summary);
        for (auto it = s.begin(); it != s.end(); ++it)
            h << "<tr><td>" << esc(it.key()) << "</td><td>"
              << esc(it.value().is_string() ? it.value().get<std::string>() : it.value().dump()) << "</td></tr>";
    } catch (...) {
        h << "<tr><td>summary.json is unreadable</td></tr>";
    }
    h << "</table>";
}

// Image grids (embedded PNGs) and, for 2-d data, the scatter and density plots.
void samples_section(std::ostringstream& h, const fs::path& dir) {
    h << "<h2>Samples</h2><div class='row'>";
    bool any = false;
    for (const char* img : {"samples.png", "samples_t0.7.png", "data.png"}) {
        if (!fs::exists(dir / img)) continue;
        h << "<figure><img class='grid' alt='" << img << "' src='data:image/png;base64," << base64(read_all(dir / img))
          << "'/><figcaption>" << img << "</figcaption></figure>";
        any = true;
    }
    const std::string p2 = plots_2d(dir);
    h << p2;
    if (!any && p2.empty()) h << "<p>No samples in this run directory.</p>";
    h << "</div>";
}

// The flow's picture: architecture.svg inline (Graphviz's SVG from its <svg> on, without the XML
// prolog and doctype that HTML does not take), else where the DOT file is and how to render it.
void architecture_section(std::ostringstream& h, const fs::path& dir) {
    h << "<h2>Architecture</h2>";
    const std::string render = "<code>dot -Tsvg architecture.dot -o architecture.svg</code>";
    if (fs::exists(dir / "architecture.svg")) {
        const std::string svg = read_all(dir / "architecture.svg");
        const std::size_t at = svg.find("<svg");
        if (at != std::string::npos) {
            h << "<div class='arch'>" << svg.substr(at) << "</div>";
            return;
        }
    }
    if (!fs::exists(dir / "architecture.dot"))
        h << "<p>No architecture.dot in this run directory (flowlab run writes it when a run starts).</p>";
    else if (find_on_path("dot").empty())
        h << "<p>Graphviz is not installed, so the flow's picture was not rendered (Debian: <code>apt-get install "
             "graphviz</code>). architecture.dot is in the run directory; render it with " << render << ".</p>";
    else
        h << "<p>Graphviz's dot did not render the flow's picture (the run's output says why). architecture.dot is in "
             "the run directory; render it with " << render << ".</p>";
}

}  // namespace

std::string write_report(const std::string& run_dir) {
    const fs::path dir(run_dir);
    const Metrics m = read_metrics(dir);
    const std::string config = fs::exists(dir / "config.json") ? read_all(dir / "config.json") : "{}";
    const std::string summary = fs::exists(dir / "summary.json") ? read_all(dir / "summary.json") : "";
    const std::string name = run_name(dir, config);

    std::ostringstream h;
    h << "<!DOCTYPE html><html><head><meta charset='utf-8'><title>flowlab run: " << esc(name) << "</title><style>"
      << "body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}"
      << "h1{font-size:22px}h2{font-size:17px;margin-top:28px}"
      << ".row{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0}figcaption{text-align:center;font-size:13px}"
      << "pre{background:#f6f6f6;padding:12px;font-size:12px;overflow:auto;max-height:480px}"
      << "table{border-collapse:collapse}td{padding:2px 10px;border-bottom:1px solid #eee}"
      << "img.grid{image-rendering:pixelated;width:420px;border:1px solid #999}"
      << ".arch{overflow:auto;max-height:900px;border:1px solid #ddd}</style></head><body>";
    h << "<h1>flowlab run: " << esc(name) << "</h1>";
    summary_table(h, summary);
    h << "<h2>Training</h2><div class='row'>";
    h << line_chart("Loss", "nats", {m.loss, m.test_nll, m.valid_nll});
    h << line_chart("Test bits/dim", "bits/dim", {m.test_bpd});
    h << "</div>";
    samples_section(h, dir);
    architecture_section(h, dir);
    h << "<h2>Config</h2><pre>" << esc(config) << "</pre></body></html>\n";
    const std::string out = (dir / "report.html").string();
    write_file_atomic(out, h.str());
    return out;
}

}  // namespace flowlab
