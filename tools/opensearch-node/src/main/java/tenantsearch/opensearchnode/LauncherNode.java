package tenantsearch.opensearchnode;

import java.util.Collection;

import org.opensearch.env.Environment;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;

/**
 * A {@link Node} whose module plugins come from the classpath instead of
 * {@code $OPENSEARCH_HOME/modules}.
 *
 * <p>{@code Node(Environment, Collection<Class<? extends Plugin>>, boolean)} is the
 * constructor that OpenSearch's own test framework ({@code MockNode}) uses. Classpath
 * plugins get a synthetic {@code PluginInfo} (no descriptor, no jar-hell check, no
 * extended plugins) from {@code PluginsService}.
 *
 * <p>Unlike {@code Bootstrap}, nothing here installs a security manager, runs bootstrap
 * checks, or initialises JNA natives (mlockall, seccomp). That is fine for a throwaway
 * test node bound to 127.0.0.1; do not use it as a production server.
 */
final class LauncherNode extends Node {

    LauncherNode(Environment environment, Collection<Class<? extends Plugin>> classpathPlugins) {
        // forbidPrivateIndexSettings=true: same as a packaged node (index.version.created etc. rejected)
        super(environment, classpathPlugins, true);
    }
}
