package tenantsearch.opensearchnode;

import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.net.InetAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.ServiceLoader;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.function.BiConsumer;
import java.util.function.Supplier;
import java.util.regex.Pattern;

import org.apache.logging.log4j.LogManager;
import org.opensearch.Build;
import org.opensearch.Version;
import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.http.HttpServerTransport;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.painless.PainlessPlugin;
import org.opensearch.plugins.ExtensiblePlugin;
import org.opensearch.plugins.Plugin;
import org.opensearch.transport.TransportService;

/**
 * Runs one real OpenSearch node in this JVM.
 *
 * <pre>
 *   java -Xms512m -Xmx512m -jar target/opensearch-node.jar \
 *       -Epath.home=/tmp/os1 -Ehttp.port=9200 -Etransport.port=9300 [-Ekey=value ...]
 * </pre>
 *
 * <p>Settings come from (later wins): {@code <path.home>/config/opensearch.yml} if present,
 * environment variables whose name is a lower-case dotted setting key (the OpenSearch
 * Docker convention, e.g. {@code env discovery.type=single-node java -jar ...}), then
 * {@code -Ekey=value} arguments. The launcher's defaults (see {@link #usage()}) fill in
 * only keys that none of those set.
 *
 * <p>{@code OPENSEARCH_NODE_PARENT_PID=<pid>}: shut down cleanly once that process is gone.
 * {@code --exit-after-start}: start, then close and exit 0 (used to record the CDS archive).
 *
 * <p>Exit codes: 0 after a clean shutdown on SIGTERM/SIGINT (the JVM reports 143/130 for
 * signals), 1 if the node failed to start (the cause is printed to stderr), 2 on bad
 * arguments.
 */
public final class OpenSearchNodeMain {

    /** Module plugins loaded from the classpath (class name; missing classes are fatal). */
    static final List<String> MODULE_PLUGINS = List.of(
        "org.opensearch.transport.Netty4Plugin",                              // http + transport
        "org.opensearch.analysis.common.CommonAnalysisPlugin",                // language analyzers, asciifolding, ...
        "org.opensearch.index.reindex.ReindexPlugin",                         // _reindex, _delete_by_query, _update_by_query
        "org.opensearch.painless.PainlessPlugin",                             // painless scripts
        "org.opensearch.script.mustache.MustachePlugin",                      // search templates
        "org.opensearch.index.mapper.MapperExtrasPlugin",                     // scaled_float, rank_feature, search_as_you_type, ...
        "org.opensearch.join.ParentJoinPlugin",                               // join field
        "org.opensearch.percolator.PercolatorPlugin",                         // percolate query
        "org.opensearch.search.aggregations.matrix.MatrixAggregationPlugin",  // matrix_stats
        "org.opensearch.index.rankeval.RankEvalPlugin"                        // _rank_eval
    );

    /** Settings key as accepted from the environment: lower case, at least one dot. */
    private static final Pattern ENV_SETTING = Pattern.compile("[a-z0-9_]+(\\.[a-z0-9_\\-]+)+");

    private static final String PREFIX = "opensearch-node: ";

    /** Start the node, then shut it down cleanly and exit 0 (for start-up measurements / CDS). */
    static final String EXIT_AFTER_START = "--exit-after-start";

    private OpenSearchNodeMain() {}

    public static void main(String[] args) {
        final PrintStream err = System.err;
        final Map<String, String> settings;
        final boolean exitAfterStart = List.of(args).contains(EXIT_AFTER_START);
        final String[] settingArgs = List.of(args).stream().filter(a -> a.equals(EXIT_AFTER_START) == false).toArray(String[]::new);
        try {
            settings = collectSettings(settingArgs, System.getenv());
        } catch (IllegalArgumentException e) {
            err.println(PREFIX + "ERROR: " + e.getMessage());
            err.println(usage());
            System.exit(2);
            return;
        }
        if (settings == null) { // --help
            System.out.println(usage());
            return;
        }

        watchParent(System.getenv("OPENSEARCH_NODE_PARENT_PID"), err);
        final CountDownLatch stopped = new CountDownLatch(1);
        final NodeHolder holder = new NodeHolder();
        try {
            start(settings, holder, stopped);
        } catch (Throwable t) {
            err.println(PREFIX + "failed to start, stack trace (with causes):");
            err.print(stackTrace(t));
            holder.closeQuietly(err);
            // the summary goes last, so that the tail of the output names the cause
            err.println(PREFIX + "ERROR: failed to start OpenSearch node: " + describe(t));
            err.flush();
            System.exit(1);
            return;
        }
        if (exitAfterStart) {
            // used by run.sh --prepare to record a class-data-sharing archive of a full start-up
            System.exit(0); // the shutdown hook closes the node
            return;
        }
        // Keep the JVM alive (OpenSearch's own threads are daemons in places); the shutdown hook
        // closes the node on SIGTERM/SIGINT, after which the JVM exits.
        try {
            stopped.await();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private static void start(Map<String, String> input, NodeHolder holder, CountDownLatch stopped) throws Exception {
        final long t0 = System.nanoTime();
        final Path home = Paths.get(input.get("path.home")).toAbsolutePath().normalize();
        final Path config = home.resolve("config");
        Files.createDirectories(config);
        final Path log4jConfig = config.resolve("log4j2.properties");
        if (Files.exists(log4jConfig) == false) {
            try (InputStream in = OpenSearchNodeMain.class.getResourceAsStream("/opensearch-node/log4j2.properties")) {
                if (in == null) {
                    throw new IllegalStateException("log4j2.properties resource missing from opensearch-node.jar");
                }
                Files.copy(in, log4jConfig);
            }
        }

        // Launcher defaults only for keys that neither the caller nor config/opensearch.yml set
        // (InternalSettingsPreparer lets the settings passed in win over opensearch.yml).
        final Path yml = config.resolve("opensearch.yml");
        final Settings fromYml = Files.exists(yml) ? Settings.builder().loadFromPath(yml).build() : Settings.EMPTY;
        final Map<String, String> withDefaults = applyDefaults(input, fromYml.keySet());
        final Settings.Builder builder = Settings.builder();
        withDefaults.forEach(builder::put);
        final Supplier<String> defaultNodeName = OpenSearchNodeMain::hostName;
        final Environment environment = InternalSettingsPreparer.prepareEnvironment(
            builder.build(), Collections.emptyMap(), config, defaultNodeName);
        Files.createDirectories(environment.logsFile());
        for (Path data : environment.dataFiles()) {
            Files.createDirectories(data);
        }

        // Same order as org.opensearch.bootstrap.Bootstrap: error listener, then configure log4j
        // from <config>/log4j2.properties (+ logger.* settings).
        LogConfigurator.registerErrorListener();
        final String nodeName = Node.NODE_NAME_SETTING.get(environment.settings());
        LogConfigurator.setNodeName(nodeName);
        LogConfigurator.configure(environment);
        Thread.setDefaultUncaughtExceptionHandler(OpenSearchNodeMain::uncaught);

        final List<Class<? extends Plugin>> plugins = new ArrayList<>();
        for (String name : MODULE_PLUGINS) {
            plugins.add(Class.forName(name).asSubclass(Plugin.class));
        }

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            if (holder.isOpen()) {
                System.out.println(PREFIX + "shutdown requested, closing node [" + nodeName + "]");
                System.out.flush();
                holder.closeQuietly(System.err);
                System.out.println(PREFIX + "node [" + nodeName + "] closed");
                System.out.flush();
            }
            LogManager.shutdown();
            stopped.countDown();
        }, "opensearch-node-shutdown"));

        System.out.println(PREFIX + "starting OpenSearch " + Version.CURRENT + " (" + Build.CURRENT.getQualifiedVersion()
            + ") node [" + nodeName + "] cluster [" + environment.settings().get("cluster.name", "opensearch") + "] home ["
            + home + "] java " + Runtime.version() + " heap max " + (Runtime.getRuntime().maxMemory() >> 20) + "m");
        System.out.flush();

        loadPainlessExtensions();
        final Node node = new LauncherNode(environment, plugins);
        holder.set(node);
        node.start();

        final String http = node.injector().getInstance(HttpServerTransport.class).boundAddress().publishAddress().toString();
        final String transport = node.injector().getInstance(TransportService.class).boundAddress().publishAddress().toString();
        final long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
        System.out.println(PREFIX + "started node [" + nodeName + "] http [" + http + "] transport [" + transport + "] pid ["
            + ProcessHandle.current().pid() + "] in " + ms + "ms");
        System.out.flush();
    }

    /**
     * Classpath plugins get a PluginInfo without extended plugins, so PluginsService hands
     * PainlessPlugin no PainlessExtension of the other modules (e.g. analysis-common's
     * AnalysisPainlessExtension, needed by predicate_token_filter / condition scripts).
     * PainlessPlugin keeps its allowlists in a static map that loadExtensions adds to, so
     * loading every PainlessExtension on the classpath once, before the node builds its
     * script engine, restores what a packaged node has.
     */
    private static void loadPainlessExtensions() {
        new PainlessPlugin().loadExtensions(new ExtensiblePlugin.ExtensionLoader() {
            @Override
            public <T> List<T> loadExtensions(Class<T> extensionPointType) {
                final List<T> found = new ArrayList<>();
                ServiceLoader.load(extensionPointType, OpenSearchNodeMain.class.getClassLoader()).forEach(found::add);
                return found;
            }
        });
    }

    /** Parses args + environment into the explicit settings map. Returns null for --help. */
    static Map<String, String> collectSettings(String[] args, Map<String, String> env) {
        final Map<String, String> fromArgs = new TreeMap<>();
        for (int i = 0; i < args.length; i++) {
            String arg = args[i];
            if (arg.equals("-h") || arg.equals("--help")) {
                return null;
            }
            String kv;
            if (arg.equals("-E")) {
                if (i + 1 >= args.length) {
                    throw new IllegalArgumentException("-E needs key=value");
                }
                kv = args[++i];
            } else if (arg.startsWith("-E")) {
                kv = arg.substring(2);
            } else {
                throw new IllegalArgumentException("unknown argument [" + arg + "]");
            }
            int eq = kv.indexOf('=');
            if (eq <= 0) {
                throw new IllegalArgumentException("setting [" + kv + "] must be key=value");
            }
            fromArgs.put(kv.substring(0, eq).trim(), kv.substring(eq + 1));
        }

        final Map<String, String> s = new TreeMap<>();
        env.forEach((k, v) -> {
            if (ENV_SETTING.matcher(k).matches()) {
                s.put(k, v);
            }
        });
        s.putAll(fromArgs);

        if (s.containsKey("path.home") == false) {
            String home = env.get("OPENSEARCH_NODE_HOME");
            if (home == null || home.isEmpty()) {
                throw new IllegalArgumentException("set path.home (-Epath.home=DIR) or OPENSEARCH_NODE_HOME");
            }
            s.put("path.home", home);
        }
        s.put("path.home", Paths.get(s.get("path.home")).toAbsolutePath().normalize().toString());
        return s;
    }

    /** The launcher's defaults, for every key not in {@code explicit} nor in {@code alsoSet}. */
    static Map<String, String> applyDefaults(Map<String, String> explicit, Set<String> alsoSet) {
        final Map<String, String> s = new TreeMap<>(explicit);
        final Path home = Paths.get(s.get("path.home"));
        final BiConsumer<String, String> dflt = (k, v) -> {
            if (s.containsKey(k) == false && alsoSet.contains(k) == false) {
                s.put(k, v);
            }
        };
        dflt.accept("path.data", home.resolve("data").toString());
        dflt.accept("path.logs", home.resolve("logs").toString());
        dflt.accept("network.host", "127.0.0.1");
        final boolean discoveryConfigured = List.of(
            "discovery.type",
            "discovery.seed_hosts",
            "discovery.seed_providers",
            "cluster.initial_cluster_manager_nodes",
            "cluster.initial_master_nodes"
        ).stream().anyMatch(k -> s.containsKey(k) || alsoSet.contains(k));
        if (discoveryConfigured == false) {
            s.put("discovery.type", "single-node");
        }
        // test-node friendly defaults (override with -E)
        dflt.accept("cluster.routing.allocation.disk.threshold_enabled", "false");
        dflt.accept("indices.breaker.total.use_real_memory", "false");
        return s;
    }

    /**
     * If OPENSEARCH_NODE_PARENT_PID is set, exit (cleanly, through the shutdown hook) once that
     * process is gone, so a test runner that dies without stopping its nodes leaks no JVMs.
     */
    private static void watchParent(String parentPid, PrintStream err) {
        if (parentPid == null || parentPid.isBlank()) {
            return;
        }
        final long pid;
        try {
            pid = Long.parseLong(parentPid.trim());
        } catch (NumberFormatException e) {
            err.println(PREFIX + "ignoring OPENSEARCH_NODE_PARENT_PID=" + parentPid + " (not a pid)");
            return;
        }
        final Optional<ProcessHandle> parent = ProcessHandle.of(pid);
        final Thread watcher = new Thread(() -> {
            while (parent.map(ProcessHandle::isAlive).orElse(false)) {
                try {
                    Thread.sleep(1000);
                } catch (InterruptedException e) {
                    return;
                }
            }
            err.println(PREFIX + "parent process " + pid + " is gone, shutting down");
            System.exit(0);
        }, "opensearch-node-parent-watch");
        watcher.setDaemon(true);
        watcher.start();
    }

    static String usage() {
        return String.join("\n",
            "usage: java [-Xms512m -Xmx512m] -jar opensearch-node.jar -Epath.home=DIR [-Ekey=value ...]",
            "  -Ekey=value / -E key=value   any OpenSearch node setting; also taken from environment",
            "                               variables named like a lower-case dotted setting key.",
            "  defaults: path.data=<home>/data path.logs=<home>/logs network.host=127.0.0.1",
            "            discovery.type=single-node (unless discovery.*/cluster.initial_* given)",
            "            cluster.routing.allocation.disk.threshold_enabled=false",
            "            indices.breaker.total.use_real_memory=false",
            "  path.home may also come from OPENSEARCH_NODE_HOME.",
            "  --exit-after-start: start the node, then close it and exit 0.",
            "  OPENSEARCH_NODE_PARENT_PID=PID: shut down when process PID exits.");
    }

    private static void uncaught(Thread thread, Throwable t) {
        if (t instanceof Error && (t instanceof AssertionError) == false) {
            // Mirror OpenSearchUncaughtExceptionHandler: a fatal error leaves the node in an unknown state.
            try {
                System.err.println(PREFIX + "FATAL error in thread [" + thread.getName() + "], halting: " + describe(t));
                System.err.print(stackTrace(t));
                System.err.flush();
            } finally {
                Runtime.getRuntime().halt(1);
            }
        } else {
            LogManager.getLogger(OpenSearchNodeMain.class).error("uncaught exception in thread [" + thread.getName() + "]", t);
        }
    }

    static String describe(Throwable t) {
        StringBuilder b = new StringBuilder();
        Throwable c = t;
        int depth = 0;
        while (c != null && depth++ < 10) {
            if (b.length() > 0) {
                b.append(" | caused by: ");
            }
            b.append(c.getClass().getName()).append(": ").append(c.getMessage());
            c = c.getCause() == c ? null : c.getCause();
        }
        return b.toString();
    }

    private static String stackTrace(Throwable t) {
        StringWriter w = new StringWriter();
        t.printStackTrace(new PrintWriter(w));
        return w.toString();
    }

    private static String hostName() {
        String h = System.getenv("HOSTNAME");
        if (h != null && h.isEmpty() == false) {
            return h;
        }
        try {
            return InetAddress.getLocalHost().getHostName();
        } catch (IOException e) {
            return "opensearch-node";
        }
    }

    /** Holds the node so the shutdown hook and the failure path can close it exactly once. */
    private static final class NodeHolder {
        private Node node;

        synchronized void set(Node n) {
            node = n;
        }

        synchronized boolean isOpen() {
            return node != null;
        }

        synchronized void closeQuietly(PrintStream err) {
            if (node == null) {
                return;
            }
            try {
                node.close();
                if (node.awaitClose(30, TimeUnit.SECONDS) == false) {
                    err.println(PREFIX + "node did not close within 30s");
                }
            } catch (IOException | RuntimeException e) {
                err.println(PREFIX + "error while closing node: " + describe(e));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            } finally {
                node = null;
            }
        }
    }
}
