// What a node shows of itself over HTTP:
// - GET /metrics: Prometheus text format (metrics.hpp), read from the node when scraped;
// - GET /status.json: the same facts as JSON (identity, reachability, table, relays served,
//   exposures), for the status page and `p2prc status`;
// - GET /status (and GET /): one self-contained HTML page (no external script, font or
//   style) that renders /status.json and refreshes itself.
// The table is public (any peer gets it from POST /IpTable), and so is how the node is
// reached (its own entry in that answer). When the network has a token, the rest (relays
// served, exposures, /metrics) needs it: header X-P2PRC-Token or query parameter token.
#pragma once

#include "metrics.hpp"
#include "node.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <string>

namespace p2prc {

namespace detail {

// 1: the caller may see everything (the network has no token, or it gave the right one);
// 0: it gave none; -1: it gave a wrong one.
inline int status_access(const Config& config, const HttpRequest& q) {
    if (config.token.empty()) return 1;
    std::string given = q.header(token_header);
    auto param = q.param("token");
    if (given.empty() && param) given = *param;
    if (given.empty()) return 0;
    return same_secret(given, config.token) ? 1 : -1;
}

inline nlohmann::json optional_number(const std::optional<double>& v) {
    return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

inline nlohmann::json exposure_status(std::uint16_t port, const std::optional<Exposure>& e) {
    nlohmann::json j{{"local_port", port}, {"up", e.has_value()}};
    if (e) {
        j["local"] = e->local.to_string();
        j["public"] = e->public_endpoint.to_string();
        j["relay"] = e->relay.to_string();
        j["relay_name"] = e->relay_name;
        j["relay_latency_ms"] = e->relay_latency_ms;
        j["relay_port"] = e->relay_port;
        j["changes"] = e->changes;
        j["last_change"] = e->last_change;
    }
    return j;
}

}  // namespace detail

// The facts GET /status.json answers. `full`: also the relays served and the exposures
// (what needs the network token when there is one).
inline nlohmann::json node_status(const Node& node, bool full) {
    const Config& c = node.config();
    nlohmann::json out;
    const auto started = node.started_at();
    const auto now = std::chrono::system_clock::now();
    const bool running = node.running() && started.time_since_epoch().count() != 0;
    out["node"] = {
        {"name", c.name},
        {"instance", node.instance_id()},
        {"version", version},
        {"port", node.port()},
        {"running", node.running()},
        {"uptime_s",
         running ? std::chrono::duration_cast<std::chrono::seconds>(now - started).count() : 0},
    };
    out["access"] = {{"token_required", !c.token.empty()}, {"full", full}};

    // How peers reach it: the entry it gives them.
    const Peer self = node.self_entry();
    nlohmann::json reach{{"behind_nat", node.behind_nat()}};
    if (auto e = self.endpoint()) reach["endpoint"] = e->to_string();
    if (auto relayed = node.self_exposure()) {
        reach["via"] = "relay";
        reach["relay"] = relayed->relay.to_string();
        reach["relay_name"] = relayed->relay_name;
        reach["relay_latency_ms"] = relayed->relay_latency_ms;
    } else {
        reach["via"] = self.nat ? "unreachable" : "direct";
    }
    out["reachability"] = reach;

    nlohmann::json table = nlohmann::json::array();
    for (const auto& p : node.table().peers()) {
        auto e = p.endpoint();
        table.push_back({
            {"name", p.name},
            {"endpoint", e ? e->to_string() : std::string()},
            {"ipv4", p.ipv4 ? p.ipv4->to_string() : std::string()},
            {"ipv6", p.ipv6 ? p.ipv6->to_string() : std::string()},
            {"port", p.server_port},
            {"nat", p.nat},
            {"escape", p.escape_implementation},
            {"latency_ms", detail::optional_number(p.latency_ms)},
            {"download_mbps", detail::optional_number(p.download_mbps)},
            {"upload_mbps", detail::optional_number(p.upload_mbps)},
            {"measured_at",
             p.measured_at ? nlohmann::json(*p.measured_at) : nlohmann::json(nullptr)},
        });
    }
    out["table"] = std::move(table);
    if (!full) return out;

    nlohmann::json relays{{"cap", c.relay.cap}, {"live", 0}, {"list", nlohmann::json::array()}};
    if (auto pool = node.served_relays()) {
        const auto& t = pool->traffic();
        relays["allocated_total"] = pool->counters().allocated.load();
        relays["connections_total"] = t.connections_total.load();
        relays["connections"] = t.connections_live.load();
        relays["bytes_in"] = t.bytes_in.load();
        relays["bytes_out"] = t.bytes_out.load();
        auto list = pool->relays();
        relays["live"] = list.size();
        for (const auto& r : list)
            relays["list"].push_back({{"port", r.port},
                                      {"clients", r.clients},
                                      {"logged_in", r.logged_in},
                                      {"age_s", r.age.count() / 1000},
                                      {"public_ports", r.public_ports},
                                      {"connections", r.connections},
                                      {"connections_total", r.connections_total},
                                      {"bytes_in", r.bytes_in},
                                      {"bytes_out", r.bytes_out}});
    }
    out["relays"] = std::move(relays);
    nlohmann::json exposures = nlohmann::json::array();
    for (const auto& [port, e] : node.exposures())
        exposures.push_back(detail::exposure_status(port, e));
    out["exposures"] = std::move(exposures);
    return out;
}

// GET /metrics: the Prometheus text exposition of the node.
inline std::string node_metrics(const Node& node) {
    PrometheusWriter w;
    const Config& c = node.config();
    w.family("p2prc_node_info", "gauge", "Constant 1; the labels name the node.");
    w.sample("p2prc_node_info",
             {{"name", c.name}, {"instance", node.instance_id()}, {"version", version}}, 1);
    const auto started = node.started_at().time_since_epoch();
    w.single(
        "p2prc_start_time_seconds", "gauge", "When the node's server started, in Unix seconds.",
        double(std::chrono::duration_cast<std::chrono::milliseconds>(started).count()) / 1000.0);
    w.single("p2prc_behind_nat", "gauge",
             "1 when the node is behind NAT (configured or found out).", node.behind_nat() ? 1 : 0);

    std::size_t nat = 0, open = 0, measured = 0;
    for (const auto& p : node.table().peers()) {
        (p.nat ? nat : open) += 1;
        measured += p.measured();
    }
    w.family("p2prc_peers", "gauge", "Servers in the table, by whether they are behind NAT.");
    w.sample("p2prc_peers", {{"nat", "false"}}, double(open));
    w.sample("p2prc_peers", {{"nat", "true"}}, double(nat));
    w.single("p2prc_peers_measured", "gauge", "Servers in the table with a measured latency.",
             double(measured));

    const auto m = node.metrics();
    w.family(
        "p2prc_probe_round_duration_seconds", "histogram",
        "Duration of the probe rounds over the whole table (the count is the number of rounds).");
    m->probe_round_seconds.write(w, "p2prc_probe_round_duration_seconds");
    w.family("p2prc_peers_pruned_total", "counter",
             "Servers removed from the table because they did not answer, by failure.");
    m->prunes.write(w, "p2prc_peers_pruned_total", {{"refused"}, {"timeout"}});
    w.family("p2prc_learned_entries_total", "counter",
             "Entries of tables received from peers: accepted (alive), refused (scope rule, entry "
             "bound, "
             "dead) or deferred (not checked yet).");
    m->learned.write(w, "p2prc_learned_entries_total",
                     {{"accepted", "alive"},
                      {"refused", "dead"},
                      {"refused", "scope"},
                      {"refused", "entry_limit"},
                      {"deferred", "unchecked"}});

    auto pool = node.served_relays();
    std::uint64_t live = 0, clients = 0;
    std::vector<RelayInfo> list;
    if (pool) list = pool->relays();
    live = list.size();
    for (const auto& r : list) clients += r.clients;
    const frp::TrafficStats none;
    const frp::TrafficStats& t = pool ? pool->traffic() : none;
    w.single("p2prc_relays", "gauge", "Relays this node serves now (each made by a GET /FRPPort).",
             double(live));
    w.single("p2prc_relays_cap", "gauge", "The most relays this node serves at once (relay.cap).",
             double(c.relay.cap));
    w.single("p2prc_relays_allocated_total", "counter", "Relays made on GET /FRPPort.",
             pool ? double(pool->counters().allocated.load()) : 0.0);
    w.single("p2prc_relay_clients", "gauge", "frp clients logged in to the relays served.",
             double(clients));
    w.single("p2prc_relay_connections", "gauge",
             "User connections tunnelled through the relays served, now.",
             double(t.connections_live.load()));
    w.single("p2prc_relay_connections_total", "counter",
             "User connections tunnelled through the relays served.",
             double(t.connections_total.load()));
    w.family("p2prc_relay_bytes_total", "counter",
             "Bytes relayed: to_service from users to the exposed services, to_user back.");
    w.sample("p2prc_relay_bytes_total", {{"direction", "to_service"}}, double(t.bytes_in.load()));
    w.sample("p2prc_relay_bytes_total", {{"direction", "to_user"}}, double(t.bytes_out.load()));
    w.family("p2prc_relay_refusals_total", "counter",
             "Refused by a bound: cap (live relays), per_address (one requester's share), clients "
             "(logins "
             "per relay), connections (connections per relay).");
    w.sample("p2prc_relay_refusals_total", {{"bound", "cap"}},
             pool ? double(pool->counters().refused_cap.load()) : 0.0);
    w.sample("p2prc_relay_refusals_total", {{"bound", "per_address"}},
             pool ? double(pool->counters().refused_per_address.load()) : 0.0);
    w.sample("p2prc_relay_refusals_total", {{"bound", "clients"}},
             double(t.refused_clients.load()));
    w.sample("p2prc_relay_refusals_total", {{"bound", "connections"}},
             double(t.refused_connections.load()));

    std::size_t up = 0, pending = 0;
    for (const auto& [port, e] : node.exposures()) (e ? up : pending) += 1;
    w.family("p2prc_exposures", "gauge",
             "Local ports this node exposes through a relay, by state.");
    w.sample("p2prc_exposures", {{"state", "up"}}, double(up));
    w.sample("p2prc_exposures", {{"state", "starting"}}, double(pending));
    w.family("p2prc_exposure_changes_total", "counter",
             "Relay changes of exposed ports: failover (relay lost), move (a clearly nearer "
             "relay), reconnect "
             "(same relay, new public port).");
    m->exposure_changes.write(w, "p2prc_exposure_changes_total",
                              {{"failover"}, {"move"}, {"reconnect"}});
    w.family("p2prc_dialbacks_total", "counter",
             "Dialbacks: asked (this node asked a peer to connect back) and served (for a peer), "
             "by result.");
    m->dialbacks.write(w, "p2prc_dialbacks_total",
                       {{"asked", "reachable"},
                        {"asked", "unreachable"},
                        {"asked", "no_answer"},
                        {"served", "reachable"},
                        {"served", "unreachable"}});
    return w.text();
}

namespace detail {

// The status page. Everything it needs is here (no external script, font, style or image);
// peers' names are set as text, never as markup, since any peer picks its own name.
inline constexpr const char* status_page_html = R"HTML(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>p2prc node</title>
<style>
:root{--bg:#f5f6f8;--card:#fff;--ink:#1d2330;--muted:#667085;--line:#e3e6eb;--accent:#2f6fdd;--good:#1a8f5a;--warn:#c27c0e;--bad:#c9372c}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;background:var(--bg);color:var(--ink)}
header{background:#1d2330;color:#fff;padding:14px 20px;display:flex;flex-wrap:wrap;gap:6px 16px;align-items:baseline}
header h1{margin:0;font-size:20px;font-weight:600;word-break:break-all}
header .sub{color:#b8c0cc;font-size:13px}
header .updated{margin-left:auto;color:#b8c0cc;font-size:13px}
main{max-width:1200px;margin:0 auto;padding:16px 20px 40px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr));gap:12px;margin-bottom:16px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:18px;font-weight:600;margin-top:2px;overflow-wrap:anywhere}
.card .d{color:var(--muted);font-size:13px;overflow-wrap:anywhere}
.pill{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;font-weight:600;color:#fff;background:var(--muted)}
.pill.good{background:var(--good)}.pill.warn{background:var(--warn)}.pill.bad{background:var(--bad)}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;margin-bottom:16px;overflow-x:auto}
section h2{font-size:16px;margin:0;padding:10px 14px;border-bottom:1px solid var(--line);display:flex;align-items:center;gap:8px;flex-wrap:wrap}
section h2 .count{color:var(--muted);font-weight:400;font-size:14px}
section h2 label{margin-left:auto;font-weight:400;font-size:13px;color:var(--muted)}
.empty{color:var(--muted);padding:12px 14px;margin:0}
.notice{background:#fff8e6;border:1px solid #f0d79a;border-radius:8px;padding:10px 14px;margin-bottom:16px}
.notice.error{background:#fdecea;border-color:#f2b8b5}
table{width:100%;border-collapse:collapse}
th,td{text-align:left;padding:7px 14px;border-bottom:1px solid var(--line);vertical-align:middle}
tbody tr:last-child td{border-bottom:0}
th{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em;font-weight:600;white-space:nowrap}
th[data-key]{cursor:pointer;user-select:none}
th[data-key]:hover{color:var(--ink)}
th.sorted::after{content:" \25B2"}th.sorted.desc::after{content:" \25BC"}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
td.mono{white-space:nowrap}
.bar{display:flex;align-items:center;gap:8px;min-width:150px}
.bar .track{flex:1;height:8px;background:#eef0f3;border-radius:4px;overflow:hidden;min-width:60px}
.bar .fill{height:100%;background:var(--accent);border-radius:4px}
.bar.lat .fill{background:var(--good)}.bar.lat .fill.slow{background:var(--warn)}
.bar .v{min-width:84px;text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.na{color:var(--muted)}
select{font:inherit;padding:2px 4px}
@media (max-width:700px){
  header{padding:12px 14px}header .updated{margin-left:0;width:100%}
  main{padding:12px 10px 30px}
  table,tbody,tr,td{display:block;width:100%}
  thead{display:none}
  tbody tr{border-bottom:1px solid var(--line);padding:6px 0}
  tbody tr:last-child{border-bottom:0}
  td{border:0;padding:3px 14px;display:flex;gap:10px;align-items:center}
  td::before{content:attr(data-label);flex:0 0 92px;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.03em}
  td>.bar{flex:1;min-width:0}
  td.mono{white-space:normal;overflow-wrap:anywhere}
  .cards{grid-template-columns:repeat(2,minmax(0,1fr));gap:8px}
  .card{padding:10px 12px}.card .v{font-size:16px}
}
</style>
</head>
<body>
<header><h1 id="name">p2prc node</h1><span class="sub" id="identity"></span><span class="updated" id="updated">loading…</span></header>
<main>
<div id="notice" class="notice" hidden></div>
<div class="cards">
  <div class="card"><div class="k">Reachable</div><div class="v" id="reach-how">–</div><div class="d" id="reach-detail"></div></div>
  <div class="card"><div class="k">Servers known</div><div class="v" id="peer-count">–</div><div class="d" id="peer-detail"></div></div>
  <div class="card"><div class="k">Relays served</div><div class="v" id="relay-count">–</div><div class="d" id="relay-detail"></div></div>
  <div class="card"><div class="k">Exposures</div><div class="v" id="exposure-count">–</div><div class="d" id="exposure-detail"></div></div>
</div>
<section id="table-section">
  <h2>IP table <span class="count" id="table-count"></span>
    <label>sort <select id="sort">
      <option value="latency_ms">latency</option><option value="name">name</option><option value="endpoint">address</option>
      <option value="nat">NAT</option><option value="download_mbps">download</option><option value="upload_mbps">upload</option>
    </select></label></h2>
  <table id="peers"><thead><tr>
    <th data-key="name">Name</th><th data-key="endpoint">Address</th><th data-key="nat">NAT</th>
    <th data-key="latency_ms">Latency</th><th data-key="download_mbps">Download</th><th data-key="upload_mbps">Upload</th>
  </tr></thead><tbody></tbody></table>
  <p class="empty" id="peers-empty" hidden>The table is empty.</p>
</section>
<section id="relays-section">
  <h2>Relays served <span class="count" id="relays-count"></span></h2>
  <table id="relays"><thead><tr>
    <th>Port</th><th>Clients</th><th>Public ports</th><th>Connections</th><th>To service</th><th>To users</th><th>Age</th>
  </tr></thead><tbody></tbody></table>
  <p class="empty" id="relays-empty">No relay served.</p>
</section>
<section id="exposures-section">
  <h2>Exposures <span class="count" id="exposures-count"></span></h2>
  <table id="exposures"><thead><tr>
    <th>Local</th><th>Public</th><th>Relay</th><th>Relay latency</th><th>Changes</th>
  </tr></thead><tbody></tbody></table>
  <p class="empty" id="exposures-empty">Nothing exposed.</p>
</section>
</main>
<script>
(function(){
"use strict";
var q=new URLSearchParams(location.search),h=new URLSearchParams(location.hash.slice(1));
var token=h.get("token")||q.get("token")||"";
var sortKey="latency_ms",sortDesc=false,last=null;
function $(id){return document.getElementById(id);}
function el(tag,cls,text){var e=document.createElement(tag);if(cls)e.className=cls;if(text!==undefined&&text!==null)e.textContent=String(text);return e;}
function cell(tr,label,child,cls){var td=el("td",cls);td.setAttribute("data-label",label);if(child instanceof Node)td.appendChild(child);else td.textContent=child;tr.appendChild(td);return td;}
function bytes(n){var u=["B","KiB","MiB","GiB","TiB"],i=0;while(n>=1024&&i<u.length-1){n/=1024;i++;}return (i?n.toFixed(1):n)+" "+u[i];}
function dur(s){if(s<60)return s+" s";if(s<3600)return Math.floor(s/60)+" min";if(s<86400)return (s/3600).toFixed(1)+" h";return (s/86400).toFixed(1)+" d";}
function bar(v,max,unit,cls,slow){var b=el("div","bar "+cls);var t=el("div","track");var f=el("div","fill"+(slow?" slow":""));
  if(v===null||v===undefined){b.appendChild(t);b.appendChild(el("span","v na","–"));return b;}
  f.style.width=Math.max(2,Math.min(100,max>0?v/max*100:0))+"%";t.appendChild(f);b.appendChild(t);
  var shown=v;if(unit==="Mbit/s"&&v>=1000){shown=v/1000;unit="Gbit/s";}
  b.appendChild(el("span","v",(shown<10?shown.toFixed(2):shown<100?shown.toFixed(1):shown.toFixed(0))+" "+unit));return b;}
function cmp(a,b){var x=a[sortKey],y=b[sortKey];var nx=(x===null||x===undefined),ny=(y===null||y===undefined);
  if(nx||ny)return nx===ny?0:(nx?1:-1);if(x<y)return sortDesc?1:-1;if(x>y)return sortDesc?-1:1;return 0;}
function notice(text,error){var n=$("notice");n.hidden=!text;n.textContent=text||"";n.className="notice"+(error?" error":"");}
function renderPeers(rows){
  var body=$("peers").tBodies[0];body.textContent="";
  var maxLat=0,maxTp=0;rows.forEach(function(p){if(p.latency_ms>maxLat)maxLat=p.latency_ms;["download_mbps","upload_mbps"].forEach(function(k){if(p[k]>maxTp)maxTp=p[k];});});
  rows.slice().sort(cmp).forEach(function(p){var tr=el("tr");tr.setAttribute("data-peer",p.endpoint);
    cell(tr,"Name",p.name||"–");cell(tr,"Address",p.endpoint,"mono");
    cell(tr,"NAT",el("span","pill "+(p.nat?(p.escape==="FRP"?"warn":"bad"):"good"),p.nat?(p.escape==="FRP"?"via relay":"behind NAT"):"open"));
    cell(tr,"Latency",bar(p.latency_ms,maxLat,"ms","lat",p.latency_ms>200));
    cell(tr,"Download",bar(p.download_mbps,maxTp,"Mbit/s","tp"));cell(tr,"Upload",bar(p.upload_mbps,maxTp,"Mbit/s","tp"));
    body.appendChild(tr);});
  $("peers-empty").hidden=rows.length>0;
  Array.prototype.forEach.call(document.querySelectorAll("#peers th"),function(th){th.classList.toggle("sorted",th.getAttribute("data-key")===sortKey);th.classList.toggle("desc",sortDesc);});
  $("sort").value=sortKey;}
function renderRelays(r){
  var body=$("relays").tBodies[0];body.textContent="";
  (r.list||[]).forEach(function(x){var tr=el("tr");tr.setAttribute("data-relay-port",x.port);
    cell(tr,"Port",x.port,"num");cell(tr,"Clients",x.clients,"num");
    cell(tr,"Public ports",x.public_ports.length?x.public_ports.join(", "):"–","num");
    cell(tr,"Connections",x.connections+" now, "+x.connections_total+" total","num");
    cell(tr,"To service",bytes(x.bytes_in),"num");cell(tr,"To users",bytes(x.bytes_out),"num");cell(tr,"Age",dur(x.age_s),"num");
    body.appendChild(tr);});
  $("relays-empty").hidden=(r.list||[]).length>0;$("relays").hidden=!(r.list||[]).length;
  $("relays-count").textContent=r.live+" of "+r.cap;}
function renderExposures(list){
  var body=$("exposures").tBodies[0];body.textContent="";
  list.forEach(function(x){var tr=el("tr");tr.setAttribute("data-exposure",x.local_port);
    cell(tr,"Local",x.local||("port "+x.local_port),"mono");cell(tr,"Public",x.up?x.public:"coming up…","mono");
    cell(tr,"Relay",x.up?(x.relay_name?x.relay_name+" ("+x.relay+")":x.relay):"–","mono");
    cell(tr,"Relay latency",x.up?x.relay_latency_ms.toFixed(1)+" ms":"–","num");
    cell(tr,"Changes",x.up?(x.changes+(x.last_change?" (last: "+x.last_change+")":"")):"–","num");
    body.appendChild(tr);});
  $("exposures-empty").hidden=list.length>0;$("exposures").hidden=!list.length;}
function render(s){
  last=s;var n=s.node,r=s.reachability;
  document.title=n.name+" · p2prc";$("name").textContent=n.name;
  $("identity").textContent="instance "+n.instance+" · p2prc "+n.version+" · port "+n.port+" · up "+dur(n.uptime_s);
  $("reach-how").textContent=r.via==="relay"?"through a relay":r.via==="direct"?"directly":"not reachable";
  $("reach-detail").textContent=(r.endpoint?"at "+r.endpoint:"")+(r.via==="relay"?" via "+(r.relay_name||"")+" "+r.relay:"")+(r.behind_nat?" · behind NAT":"");
  var open=s.table.filter(function(p){return !p.nat;}).length;
  $("peer-count").textContent=s.table.length;$("peer-detail").textContent=open+" open, "+(s.table.length-open)+" behind NAT";
  $("table-count").textContent=s.table.length+(s.table.length===1?" server":" servers");
  renderPeers(s.table);
  var full=s.access.full;
  $("relays-section").hidden=!full;$("exposures-section").hidden=!full;
  if(full){renderRelays(s.relays);renderExposures(s.exposures);
    $("relay-count").textContent=s.relays.live;$("relay-detail").textContent=(s.relays.connections||0)+" connections now, "+bytes((s.relays.bytes_in||0)+(s.relays.bytes_out||0))+" relayed";
    $("exposure-count").textContent=s.exposures.length;
    $("exposure-detail").textContent=s.exposures.filter(function(x){return x.up;}).map(function(x){return x.public;}).join(", ");
    notice("");}
  else{$("relay-count").textContent="–";$("exposure-count").textContent="–";$("relay-detail").textContent="needs the network token";$("exposure-detail").textContent="needs the network token";
    notice("This network has a token: relays served and exposures are shown with it (open this page as /status#token=…).");}
  $("updated").textContent="updated "+new Date().toLocaleTimeString();
  document.body.setAttribute("data-loaded","1");}
function load(){
  var headers={};if(token)headers["X-P2PRC-Token"]=token;
  fetch("status.json",{headers:headers,cache:"no-store"}).then(function(res){
    if(res.status===401){notice("The token given is not this network's token.",true);throw null;}
    if(!res.ok)throw new Error("HTTP "+res.status);return res.json();})
  .then(render).catch(function(e){if(e){notice("Cannot reach the node: "+e.message,true);$("updated").textContent="not updated";}});}
Array.prototype.forEach.call(document.querySelectorAll("#peers th[data-key]"),function(th){th.addEventListener("click",function(){
  var k=th.getAttribute("data-key");if(k===sortKey)sortDesc=!sortDesc;else{sortKey=k;sortDesc=(k==="download_mbps"||k==="upload_mbps");}if(last)renderPeers(last.table);});});
$("sort").addEventListener("change",function(){sortKey=this.value;sortDesc=(sortKey==="download_mbps"||sortKey==="upload_mbps");if(last)renderPeers(last.table);});
load();setInterval(load,5000);
})();
</script>
</body>
</html>
)HTML";

inline void install_status_routes(Server& server, Node& node) {
    const Node* n = &node;
    server.get("/metrics", [n](const HttpRequest& q, HttpResponse& r) {
        if (status_access(n->config(), q) != 1)
            return r.error(
                401, "a valid network token is required (header X-P2PRC-Token or query token)");
        r.status = 200;
        r.content_type = "text/plain; version=0.0.4; charset=utf-8";
        r.body = node_metrics(*n);
    });
    server.get("/status.json", [n](const HttpRequest& q, HttpResponse& r) {
        const int access = status_access(n->config(), q);
        if (access < 0) return r.error(401, "the network token given is wrong");
        r.json(node_status(*n, access == 1));
        r.headers.emplace_back("Cache-Control", "no-store");
    });
    auto page = [](const HttpRequest&, HttpResponse& r) {
        r.status = 200;
        r.content_type = "text/html; charset=utf-8";
        r.body = status_page_html;
        // The page loads nothing from anywhere: say so to the browser too.
        r.headers.emplace_back(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'");
        r.headers.emplace_back("X-Content-Type-Options", "nosniff");
    };
    server.get("/status", page);
    server.get("/", page);
}

}  // namespace detail

}  // namespace p2prc
