// KafkaProbe is the readiness check compose/services.sh runs against the
// Apache Kafka broker it starts: it sends real Metadata/DescribeCluster
// requests through the Admin client and exits 0 only when the broker answers
// with its cluster id and at least one live broker, 1 otherwise.
//
// Usage: java -cp 'probe:libs/*' KafkaProbe BOOTSTRAP [TIMEOUT_MS]
import java.util.Properties;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterResult;

public final class KafkaProbe {
    public static void main(String[] args) {
        if (args.length < 1) {
            System.err.println("usage: KafkaProbe BOOTSTRAP [TIMEOUT_MS]");
            System.exit(2);
        }
        long timeoutMs = args.length > 1 ? Long.parseLong(args[1]) : 5000;
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        p.put(AdminClientConfig.CLIENT_ID_CONFIG, "fleetpipe-services-probe");
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, (int) timeoutMs);
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, (int) timeoutMs);
        try (Admin admin = Admin.create(p)) {
            DescribeClusterResult c = admin.describeCluster();
            String id = c.clusterId().get(timeoutMs, TimeUnit.MILLISECONDS);
            int nodes = c.nodes().get(timeoutMs, TimeUnit.MILLISECONDS).size();
            int topics = admin.listTopics().names().get(timeoutMs, TimeUnit.MILLISECONDS).size();
            if (nodes < 1) {
                System.err.println("kafka probe: cluster " + id + " reports no live brokers");
                System.exit(1);
            }
            System.out.println("kafka probe: cluster " + id + ", " + nodes + " broker(s), " + topics + " topic(s)");
        } catch (Exception e) {
            System.err.println("kafka probe: " + e);
            System.exit(1);
        }
    }
}
